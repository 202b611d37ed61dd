"""The two networks: the mask-conditioned inpainting U-Net of I3AD and the AE-SSIM baseline autoencoder.

Both are plain ``nn.Module``s whose constructor arguments are their whole configuration (``config``), so a network
is stored as ``config.json`` + ``model.safetensors`` (a checkpoint's other files: ``i3ad.checkpoints``). Images are
[B, C, H, W] in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i3ad.checks import is_count, shown


def for_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move a model to ``device``; on the CPU also to channels-last memory, where oneDNN's convolutions ran 1.2-1.4x
    faster for these networks (2 cores, batch 1-4). On the GPU it is left as is: an H200 ran bfloat16 channels-last
    slower than plain float32."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if torch.device(device).type == "cpu" else model


# Far beyond any network this project trains; a checkpoint's config.json asking for more is damaged (building a
# million residual blocks would take hours before the weights could refuse it).
MAX_LEVELS, MAX_BOTTLENECK_BLOCKS = 10, 64


def check_sizes(**sizes: object) -> None:
    """Refuse a network size (a width, a block count) that is not a whole number >= 1; the error names it."""
    for name, value in sizes.items():
        if not is_count(value):
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


# The U-Net's normalisation layers: GroupNorm (the shipped networks), BatchNorm, or none.
NORM_LAYERS = ("group", "batch", "none")


def check_norm_free_levels(value: object, levels: int) -> None:
    """Refuse a count of U-Net levels without normalisation that is not a whole number from 0 to ``levels``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= levels):
        raise ValueError(f"norm_free_levels must be a whole number from 0 to the {levels} levels, got {value!r}")


def _norm(channels: int, kind: str) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # Up to 8 groups, as many as divide the channels: a width such as 12 or 20 gets 4 (GroupNorm refused it).
    groups = min(8, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm_layer: str = "group") -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(in_channels, norm_layer),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels, norm_layer),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        if norm_layer == "none":
            # Without normalisation each residual branch starts at zero (its last convolution, as in Fixup, Zhang et
            # al. 2019), so the sum of the blocks' outputs cannot grow with depth at the start of training.
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class InpaintingUNet(nn.Module):
    """G(x * (1 - m), m) -> x_hat: a U-Net that sees the visible pixels and the mask, and paints every pixel.

    Args:
        channels: image channels (3 for RGB, 1 for greyscale).
        base_width: channels of the first level; the CPU demo uses 16, the benchmark model 32.
        width_multipliers: channel multiplier per level; each level after the first halves the resolution.
        bottleneck_blocks: residual blocks at the lowest resolution (they give large masks a wide context).
        patch_size: 1, or a factor by which the first level folds each patch_size x patch_size block of pixels into
            channels (pixel unshuffle; the head unfolds them again). A folded first level runs wide convolutions at a
            lower resolution instead of narrow ones at full resolution, which a GPU computes closer to its peak rate.
        full_res_width: 0, or (with patch_size > 1) the channels of a thin full-resolution path: one convolution of the
            unfolded input, joined with the unfolded head's output by two more convolutions, so that the painting's
            finest texture is not limited to what the folded levels resolve.
        norm_layer: "group" (GroupNorm, the shipped networks), "batch" (BatchNorm) or "none" (no normalisation; the
            last convolution of each residual branch then starts at zero). Compiled for a GPU, the work between the
            convolutions took about half of the shipped network's forward (``python -m i3ad bench
            --profile-convolutions``), and a GroupNorm reads its whole input once more for its statistics before it
            can normalise. A BatchNorm normalises with the statistics of the batch while training, and with fixed
            ones learnt in training at detection, where it is a per-channel scale and shift that the compiler merges
            with the activation after it; so a detection's result does not depend on the other images of its batch.
        norm_free_levels: how many levels, from full resolution down, have no normalisation layers whatever
            ``norm_layer`` says (their residual branches then start at zero; the head and a full-resolution path
            belong to the first level, the bottleneck to the last, so all levels means no normalisation at all).
            A GroupNorm costs in proportion to the size of its input, so most of its cost sits at the first levels,
            where the convolutions are narrowest.
    """

    def __init__(
        self,
        channels: int = 3,
        base_width: int = 32,
        width_multipliers: tuple[int, ...] = (1, 2, 4, 4, 4),
        bottleneck_blocks: int = 2,
        patch_size: int = 1,
        full_res_width: int = 0,
        norm_layer: str = "group",
        norm_free_levels: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {shown(channels)}")
        check_sizes(base_width=base_width, levels=len(width_multipliers), patch_size=patch_size)
        check_sizes(**{f"width multiplier {i + 1}": m for i, m in enumerate(width_multipliers)})
        if bottleneck_blocks != 0:
            check_sizes(bottleneck_blocks=bottleneck_blocks)
        if not isinstance(norm_layer, str) or norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer must be one of {', '.join(NORM_LAYERS)}, got {norm_layer!r}")
        check_norm_free_levels(norm_free_levels, len(width_multipliers))
        if full_res_width != 0:
            check_sizes(full_res_width=full_res_width)
            if patch_size == 1:
                raise ValueError("a full-resolution path (full_res_width) needs a folded first level (patch_size > 1)")
        if len(width_multipliers) > MAX_LEVELS or bottleneck_blocks > MAX_BOTTLENECK_BLOCKS:
            raise ValueError(
                f"at most {MAX_LEVELS} levels and {MAX_BOTTLENECK_BLOCKS} bottleneck blocks, got "
                f"{len(width_multipliers)} and {bottleneck_blocks}"
            )
        self.config = {
            "channels": channels,
            "base_width": base_width,
            "width_multipliers": list(width_multipliers),
            "bottleneck_blocks": bottleneck_blocks,
        }
        # Recorded only when used, so that checkpoints without them stay loadable by earlier versions.
        if patch_size != 1:
            self.config["patch_size"] = patch_size
        if full_res_width:
            self.config["full_res_width"] = full_res_width
        if norm_layer != "group":
            self.config["norm_layer"] = norm_layer
        if norm_free_levels:
            self.config["norm_free_levels"] = norm_free_levels

        def level_norm(level: int) -> str:
            return "none" if level < norm_free_levels else norm_layer

        widths = [base_width * m for m in width_multipliers]
        self.patch_size = patch_size
        self.stem = nn.Conv2d((channels + 1) * patch_size**2, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, width in enumerate(widths):
            self.down_blocks.append(ResidualBlock(widths[max(i - 1, 0)], width, level_norm(i)))
            if i < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.bottleneck = nn.Sequential(
            *[ResidualBlock(widths[-1], widths[-1], level_norm(len(widths) - 1)) for _ in range(bottleneck_blocks)]
        )
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(widths) - 1)):
            self.upsamples.append(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1))
            self.up_blocks.append(ResidualBlock(2 * widths[i], widths[i], level_norm(i)))
        head_channels = full_res_width or channels  # per unfolded pixel
        self.head = nn.Sequential(
            _norm(widths[0], level_norm(0)),
            nn.SiLU(),
            nn.Conv2d(widths[0], head_channels * patch_size**2, 3, padding=1),
        )
        self.full_res_stem = nn.Conv2d(channels + 1, full_res_width, 3, padding=1) if full_res_width else None
        self.full_res_head = (
            nn.Sequential(
                _norm(2 * full_res_width, level_norm(0)),
                nn.SiLU(),
                nn.Conv2d(2 * full_res_width, full_res_width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(full_res_width, channels, 3, padding=1),
            )
            if full_res_width
            else None
        )
        self.size_multiple = patch_size * 2 ** (len(widths) - 1)

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        """images: [B, C, H, W] in [0, 1]; masks: [B, 1, H, W], 1 = hidden. Returns the painting [B, C, H, W]."""
        height, width = images.shape[-2:]
        # Hidden pixels are zeroed here, so that no caller can leak them to the network by mistake.
        x = torch.cat([images * (1 - masks), masks], dim=1)
        pad_h, pad_w = -height % self.size_multiple, -width % self.size_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        full_res = self.full_res_stem(x) if self.full_res_stem is not None else None
        x = self.stem(F.pixel_unshuffle(x, self.patch_size))
        skips = []
        for i, block in enumerate(self.down_blocks):
            x = block(x)
            if i < len(self.downsamples):
                skips.append(x)
                x = self.downsamples[i](x)
        x = self.bottleneck(x)
        for upsample, block in zip(self.upsamples, self.up_blocks, strict=True):
            skip = skips.pop()
            x = upsample(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
            x = block(torch.cat([x, skip], dim=1))
        x = F.pixel_shuffle(self.head(x), self.patch_size)
        if full_res is not None:
            x = self.full_res_head(torch.cat([x, full_res], dim=1))
        return torch.sigmoid(x)[..., :height, :width]


class ConvAutoencoder(nn.Module):
    """AE-SSIM baseline (Bergmann et al. 2018): strided convolutions down to a ``latent_dim`` vector and back.

    Args:
        channels: image channels (3 for RGB, 1 for greyscale).
        image_size: square input size; a power of two >= 32 (the encoder halves it down to 8 x 8).
        base_width: channels of the first convolutions (32 in the paper).
        latent_dim: size of the bottleneck vector.
    """

    def __init__(self, channels: int = 3, image_size: int = 256, base_width: int = 32, latent_dim: int = 128) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {shown(channels)}")
        if image_size < 32 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 32, got {image_size}")
        check_sizes(base_width=base_width, latent_dim=latent_dim)
        self.config = {
            "channels": channels,
            "image_size": image_size,
            "base_width": base_width,
            "latent_dim": latent_dim,
        }
        halvings = (image_size // 8).bit_length() - 1
        widths = [min(base_width * 2 ** (i // 2), 4 * base_width) for i in range(halvings)]

        def act() -> nn.Module:
            return nn.LeakyReLU(0.2)

        encoder: list[nn.Module] = []
        previous = channels
        for width in widths:
            # A 4x4 stride-2 convolution, then a 3x3 one at the new resolution, as in the paper's encoder.
            encoder += [nn.Conv2d(previous, width, 4, stride=2, padding=1), _norm(width, "group"), act()]
            encoder += [nn.Conv2d(width, width, 3, padding=1), _norm(width, "group"), act()]
            previous = width
        encoder += [nn.Conv2d(previous, latent_dim, 8)]
        decoder: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, previous, 8), _norm(previous, "group"), act()]
        for width in reversed(widths):
            decoder += [nn.Conv2d(previous, width, 3, padding=1), _norm(width, "group"), act()]
            decoder += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), _norm(width, "group"), act()]
            previous = width
        decoder += [nn.Conv2d(previous, channels, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.image_size = image_size

    def forward(self, images: Tensor) -> Tensor:
        """images: [B, C, image_size, image_size] in [0, 1]. Returns the reconstruction, same shape."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"the autoencoder takes {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}"
            )
        return self.decoder(self.encoder(images))
