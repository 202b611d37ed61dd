"""The i3ad web app: detect anomalies in an image with a category's model, and look at the benchmark.

Run ``python app.py`` (http://127.0.0.1:7860; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change host and port). The same
file is the Hugging Face Space's entry point; on ZeroGPU the detection runs inside ``spaces.GPU``.

Environment: I3AD_CHECKPOINTS (local checkpoints folder, default ./checkpoints next to this file), I3AD_HUB_REPO and
I3AD_HUB_REVISION (a Hub repo to download checkpoints missing locally, see i3ad/hub.py), I3AD_RESULTS (benchmark CSV,
default results/benchmark.csv), I3AD_DATA_ROOT (a data folder in the MVTec AD layout whose test images become
examples). The UI is a thin layer: the work is done in i3ad.demo.
"""

from __future__ import annotations

import os

# Analytics off: Blocks(analytics_enabled=False) covers the app, this the calls Gradio makes outside it (launch).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:  # On a ZeroGPU Space, spaces.GPU attaches a GPU for the duration of each call; elsewhere it is not installed.
    import spaces  # before torch, as ZeroGPU asks

    gpu = spaces.GPU
except ImportError:

    def gpu(function):
        return function


import html
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from i3ad.batching import is_cpu_out_of_memory, unless_out_of_gpu_memory
from i3ad.calibration import MAX_CALIBRATED_ITERATIONS
from i3ad.checkpoints import CheckpointError
from i3ad.demo import (
    BASELINE_VARIANT,
    OUTPUT_MAX_AGE_S,
    TAU_RANGE,
    TAU_STEP,
    ModelDefaults,
    ModelStore,
    benchmark_view,
    data_examples,
    detect_image,
    first_working_model,
    model_defaults,
    model_variants,
    new_output_folder,
    synthetic_examples,
)
from i3ad.hub import CheckpointResolver
from i3ad.images import ImageReadError
from i3ad.pipeline import resolve_device

APP_DIR = Path(__file__).resolve().parent
ENV_RESULTS, ENV_DATA_ROOT = "I3AD_RESULTS", "I3AD_DATA_ROOT"
# Detections at once: two on a CPU (each already uses every core), more on a GPU.
CPU_CONCURRENCY, GPU_CONCURRENCY = 2, 4
OUTPUT_HEIGHT = 300  # px of the result images on the page
# Uploads above this size are refused by Gradio before they reach the disk; a 40-megapixel image (the most
# i3ad.images reads) fits unless it is 16-bit or incompressible noise.
MAX_UPLOAD_SIZE = "100mb"

INTRO = """# i3ad: anomaly detection by iterative inpainting
Upload an image of a category (or pick an example). I3AD first repaints every pixel from its surroundings (four
complementary grid masks), then repeatedly hides the pixels whose SSIM to the input is below **tau** and repaints only
those, **T** times. Where the final reconstruction differs from the input more than held-out normal images usually do
at that place is the anomaly map; its maximum is the image score, called anomalous above a threshold calibrated on
those normal images. The autoencoder (AE) baseline, scored the same way, is shown beside it. Each model starts at its
own default T, named beside it; at T = 0 only the first repaint runs, so raise T to see the iterations."""


@dataclass
class AppConfig:
    """Where the app finds its models, results and example images."""

    resolver: CheckpointResolver
    results: Path
    data_root: Path | None = None
    device: str = "auto"

    @classmethod
    def from_env(cls) -> AppConfig:
        data_root = os.environ.get(ENV_DATA_ROOT)
        return cls(
            resolver=CheckpointResolver.from_env(APP_DIR / "checkpoints"),
            results=Path(os.environ.get(ENV_RESULTS) or APP_DIR / "results" / "benchmark.csv"),
            data_root=Path(data_root) if data_root else None,
        )


def slider_settings(defaults: ModelDefaults) -> tuple[dict, dict]:
    """Settings of the iteration and tau sliders for a model: its default T and calibrated tau (fixed for the AE)."""
    iterations = {"value": defaults.iterations, "interactive": defaults.ssim_threshold is not None}
    if defaults.ssim_threshold is None:
        return iterations, {"label": "SSIM threshold tau (not used by the AE)", "interactive": False}
    value = round(defaults.ssim_threshold, 3)
    tau = {
        "value": value,
        "minimum": min(TAU_RANGE[0], value),
        "label": f"SSIM threshold tau (calibrated: {defaults.ssim_threshold:.4f}; used from T = 1)",
        "interactive": True,
    }
    return iterations, tau


def request_error(message: str) -> gr.Error:
    """A gr.Error for a message that may quote the request (a category, a model or a file name): Gradio shows
    messages as HTML, so they are shown as text."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def _inside(path: str, folder: Path) -> bool:
    """Whether ``path`` is in ``folder`` once ".." and links are resolved."""
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError, RuntimeError):  # a NUL character, a link loop
        return False


def image_path(image: str | dict | None, upload_folder: Path | None = None) -> tuple[str, str | None]:
    """(path, the user's file name or None) of the detect event's image: a file path or Gradio's file payload.

    upload_folder: when given, the file must lie in it (Gradio's cache, where uploads and examples are). Gradio checks
    that a file payload is an upload only when the payload carries its FileData marker, and adds the marker to one
    that does not (Gradio 6.31, with or without preprocessing): a request with {"path": "/any/file.png"} reaches the
    handler unchecked, and its heat-map would show any image on the server.
    """
    payload = image if isinstance(image, dict) else {"path": image}
    path, name = payload.get("path"), payload.get("orig_name")
    if not path:
        raise gr.Error("Upload an image (or click an example) first.", print_exception=False)
    if not isinstance(path, str) or (upload_folder is not None and not _inside(path, upload_folder)):
        raise gr.Error(
            "The image must be a file uploaded to this app (from Python: gradio_client.handle_file(path)).",
            print_exception=False,
        )
    if upload_folder is not None and not Path(path).is_file():  # the cache is cleaned every OUTPUT_MAX_AGE_S
        raise gr.Error(
            f"The uploaded image is no longer on the server (uploads are deleted after {OUTPUT_MAX_AGE_S // 60} "
            "minutes): upload it again.",
            print_exception=False,
        )
    return path, name if isinstance(name, str) and name else None


class Handlers:
    """The app's event functions; Gradio calls them, and so do the tests."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.store = ModelStore(config.resolver, resolve_device(config.device))
        # Set by build_app to Gradio's cache: the detect event then only reads files from there (see image_path).
        self.upload_folder: Path | None = None
        # Example images and each detection's files (kept for OUTPUT_MAX_AGE_S, see new_output_folder); all removed
        # when the app's process ends.
        self._workspace = tempfile.TemporaryDirectory(prefix="i3ad_app_")
        self.output_root = Path(self._workspace.name)
        self.synthetic = synthetic_examples(self.output_root / "examples")

    def categories(self) -> list[str]:
        return list(self.store.available())

    def category_menu(self) -> dict:
        """The category menu's choices when a page opens: a Hub repo that could not be reached when the app started
        adds its categories once it can be."""
        return gr.update(choices=self.categories())

    def examples(self, category: str) -> list[list[str]]:
        return [[str(p)] for p in self.synthetic + data_examples(self.config.data_root, category)]

    def defaults(self, category: str, variant: str) -> ModelDefaults:
        try:
            return model_defaults(self.store.get(category, variant))
        except CheckpointError as error:
            raise request_error(str(error)) from None

    def model_controls(self, category: str, variant: str) -> tuple:
        """Iteration slider, tau slider and the model's description, for the chosen model; the values a detection
        runs with go back to None (the model's own, see build_app)."""
        defaults = self.defaults(category, variant)
        iterations, tau = slider_settings(defaults)
        return gr.update(**iterations), gr.update(**tau), defaults.description, None, None

    def on_category(self, category: str) -> tuple:
        """A new category: its model menu on the default model (or, when that one is damaged, the first that loads,
        as when the app opens), that model's slider settings, its example images."""
        variants = self.store.available().get(category)
        if not variants:
            raise request_error(f"No model for category {category!r}.")
        try:
            _, variant, _ = first_working_model(self.store, [category])
        except CheckpointError as error:
            raise request_error(str(error)) from None
        choices = model_variants(variants)
        menu = gr.update(choices=choices, value=variant, visible=len(choices) > 1)
        return (menu, *self.model_controls(category, variant), gr.Dataset(samples=self.examples(category)))

    def detect(
        self,
        category: str,
        variant: str,
        image: str | dict | None,
        iterations: float | None,
        ssim_threshold: float | None,
        progress: gr.Progress | None = None,
    ) -> tuple:
        """Run the detection; returns heat-map, mask, baseline heat-map, summary, step gallery and files.

        image: a file path, or Gradio's file payload (the detect event skips Gradio's preprocessing, whose image
        decoding would turn a non-image upload into a bare "Error"; read_image says what is wrong instead).
        iterations / ssim_threshold: None for the model's default T / calibrated tau; checked by detect_image (a
        request may carry anything).
        """
        path, name = image_path(image, self.upload_folder)
        if progress is not None:
            progress(0.1, desc=f"Running {category} / {variant}")
        try:
            report = unless_out_of_gpu_memory(
                lambda: detect_image(
                    self.store,
                    category,
                    variant,
                    path,
                    iterations=iterations,
                    ssim_threshold=ssim_threshold,
                    out_dir=new_output_folder(self.output_root),
                )
            )
        except (CheckpointError, ImageReadError, ValueError) as error:
            message = str(error).replace(path, name) if name else str(error)  # the user's file name, not the cache's
            raise request_error(message) from None
        except RuntimeError as error:
            if not is_cpu_out_of_memory(error):
                raise
            raise gr.Error(
                "The computer ran out of memory during the detection; try a smaller image, or again in a moment.",
                print_exception=False,
            ) from None
        if report is None:
            raise gr.Error(
                "The GPU ran out of memory during the detection; try again in a moment.",
                print_exception=False,
            )
        baseline = report.baseline.heatmap if report.baseline else None
        if report.baseline is None and variant != BASELINE_VARIANT:
            gr.Warning(f"No usable autoencoder baseline checkpoint for {category}: the AE heat-map is left empty.")
        return (
            report.heatmap,
            report.mask,
            baseline,
            report.summary(),
            report.steps,
            [str(p) for p in report.files],
        )

    def benchmark(self) -> tuple:
        """Message, table and the three figures of the benchmark tab (hidden when there is nothing to show)."""
        view = benchmark_view(self.config.results)
        figures = (view.image_auroc, view.pixel_auroc, view.auroc_vs_iterations)
        table = view.table.round(4) if view.table is not None else pd.DataFrame()
        return (
            view.message,
            gr.update(value=table, visible=view.table is not None),
            *(gr.update(value=figure, visible=figure is not None) for figure in figures),
        )


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    """The Blocks app, not launched. The default model of the first category that has a working one is loaded to
    fill in the controls, the others on first use; the synthetic example images are written to a temporary folder."""
    handlers = Handlers(config or AppConfig.from_env())
    categories = handlers.categories()
    if not categories and not handlers.store.current_listing().complete:
        raise CheckpointError(
            f"no local checkpoints, and Hub repo {handlers.store.resolver.repo_id!r} could not be listed (see the "
            f"warning above; {handlers.store.resolver}): check the network and I3AD_HUB_REPO / I3AD_HUB_REVISION"
        )
    if not categories:
        raise CheckpointError(
            f"no checkpoints found ({handlers.store.resolver}); train some with `python -m i3ad train` or set "
            "I3AD_CHECKPOINTS / I3AD_HUB_REPO"
        )
    # The first working category's controls are filled in here, so that the page and the API start with working
    # values.
    category, variant, defaults = first_working_model(handlers.store, categories)
    variants = handlers.store.available()[category]
    iterations_settings, tau_settings = slider_settings(defaults)

    @gpu
    def detect(category, variant, image, iterations, ssim_threshold, progress=gr.Progress()):  # noqa: B008
        return handlers.detect(category, variant, image, iterations, ssim_threshold, progress)

    # Gradio's cache of uploads and returned files is cleared like the app's own outputs (OUTPUT_MAX_AGE_S).
    cache_cleanup = (OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)
    with gr.Blocks(title="i3ad anomaly detection", analytics_enabled=False, delete_cache=cache_cleanup) as app:
        gr.Markdown(INTRO)
        with gr.Tab("Detect"), gr.Row():
            with gr.Column(scale=1):
                category_menu = gr.Dropdown(categories, value=category, label="category", elem_id="category")
                choices = model_variants(variants)
                # Custom values: the API may ask for a variant of another category than the page's first one.
                variant_menu = gr.Dropdown(
                    choices,
                    value=variant,
                    label="model",
                    allow_custom_value=True,
                    visible=len(choices) > 1,
                    elem_id="variant",
                )
                image = gr.Image(label="image", height=320, elem_id="image")
                handlers.upload_folder = Path(image.GRADIO_CACHE)
                examples = gr.Examples(
                    handlers.examples(category), inputs=[image], label="examples", elem_id="examples"
                )
                iterations = gr.Slider(
                    0,
                    MAX_CALIBRATED_ITERATIONS,
                    step=1,
                    label="iterations T",
                    elem_id="iterations",
                    **iterations_settings,
                )
                tau = gr.Slider(maximum=TAU_RANGE[1], step=TAU_STEP, elem_id="tau", **tau_settings)
                # What a detection runs with: None (the chosen model's default T and calibrated tau) until the user
                # moves a slider. So an API call that leaves T or tau out gets the model's own values, not the
                # sliders' starting values (which are the first category's).
                iterations_value = gr.Number(None, visible=False, elem_id="iterations-value")
                tau_value = gr.Number(None, visible=False, elem_id="tau-value")
                model_info = gr.Markdown(defaults.description)
                run = gr.Button("Detect anomalies", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                summary = gr.Markdown("Upload an image and press *Detect anomalies*.", elem_id="summary")
                with gr.Row():
                    heatmap = gr.Image(
                        label="I3AD anomaly heat-map", format="png", height=OUTPUT_HEIGHT, elem_id="heatmap"
                    )
                    mask = gr.Image(
                        label="anomaly mask (score > threshold)", format="png", height=OUTPUT_HEIGHT, elem_id="mask"
                    )
                    baseline = gr.Image(
                        label="AE baseline heat-map", format="png", height=OUTPUT_HEIGHT, elem_id="baseline"
                    )
                steps = gr.Gallery(
                    label="each step: reconstruction, mask, anomaly map",
                    format="png",
                    columns=3,
                    object_fit="contain",
                    height="auto",
                    elem_id="steps",
                )
                files = gr.File(label="downloads: heat-map, mask, scores", file_count="multiple")
        with gr.Tab("Benchmark", elem_id="benchmark-tab"):
            benchmark_message = gr.Markdown()
            reload = gr.Button("Reload results", size="sm")
            image_plot = gr.Plot(label="image AUROC")
            pixel_plot = gr.Plot(label="pixel AUROC")
            iterations_plot = gr.Plot(label="image AUROC against T")
            table = gr.Dataframe(label="results at the shipped settings", interactive=False, elem_id="benchmark-table")

        model_controls = [iterations, tau, model_info, iterations_value, tau_value]
        # Copied in the browser, so that the value is in place before a click on "Detect" is sent.
        iterations.input(None, iterations, iterations_value, js="(value) => value", api_visibility="private")
        tau.input(None, tau, tau_value, js="(value) => value", api_visibility="private")
        category_menu.change(
            handlers.on_category,
            category_menu,
            [variant_menu, *model_controls, examples.dataset],
            api_visibility="private",
        )
        variant_menu.input(
            handlers.model_controls, [category_menu, variant_menu], model_controls, api_visibility="private"
        )
        run.click(
            detect,
            [category_menu, variant_menu, image, iterations_value, tau_value],
            [heatmap, mask, baseline, summary, steps, files],
            api_name="detect",
            preprocess=False,  # uploads are still checked to be in Gradio's cache; see Handlers.detect
        )
        benchmark_outputs = [benchmark_message, table, image_plot, pixel_plot, iterations_plot]
        app.load(handlers.category_menu, None, category_menu, api_visibility="private")
        app.load(handlers.benchmark, None, benchmark_outputs, api_visibility="private")
        reload.click(handlers.benchmark, None, benchmark_outputs, api_visibility="private")
    app.queue(default_concurrency_limit=CPU_CONCURRENCY if handlers.store.device.type == "cpu" else GPU_CONCURRENCY)
    return app


def launch_options(config: AppConfig) -> dict:
    """Arguments of ``launch``: the upload limit, and the data root, whose test images are the examples: Gradio
    serves files from the working and temporary folders only, and refused a category's examples from elsewhere
    (its menu changed, and every other control showed a bare "Error")."""
    return {"max_file_size": MAX_UPLOAD_SIZE, "allowed_paths": [str(config.data_root)] if config.data_root else None}


if __name__ == "__main__":
    app_config = AppConfig.from_env()
    try:
        demo = build_app(app_config)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    demo.launch(**launch_options(app_config))
