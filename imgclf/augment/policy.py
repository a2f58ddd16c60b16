"""TrivialAugmentWide, RandAugment and AutoAugment (ImageNet) for a whole batch on its device, drawn per image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from imgclf.augment.device import memory_format_of, to_device

# Every op the three policies use, in torchvision's order (its augmentation spaces' key order): an op's index
# here is what apply() takes. TrivialAugmentWide and RandAugment choose among the first 14; Invert is AutoAugment's.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
INDEX = {name: k for k, name in enumerate(OPS)}
CHOSEN = 14  # TrivialAugmentWide's and RandAugment's ops: OPS[:14]
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness")
POLICIES = ("none", "trivial_wide", "randaugment", "autoaugment")
BINS = 31  # num_magnitude_bins of TrivialAugmentWide and RandAugment (torchvision's default)
RANDAUGMENT_OPS, RANDAUGMENT_MAGNITUDE = 2, 9  # torchvision's defaults
AUTOAUGMENT_BINS = 10  # AutoAugment's magnitude indices are into 10 bins

# torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, magnitude bin) steps.
IMAGENET = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def magnitude_table(policy: str, bins: int, height: int, width: int) -> torch.Tensor:
    """len(OPS) x bins float64 magnitudes of torchvision's augmentation space (0 for magnitude-free ops)."""
    # Built as torchvision builds them (float32 linspace, read back as Python floats), so that the
    # values are the same to the last bit.
    def line(end: float, start: float = 0.0) -> torch.Tensor:
        return torch.linspace(start, end, bins)

    wide = policy == "trivial_wide"
    table = {
        "ShearX": line(0.99 if wide else 0.3), "ShearY": line(0.99 if wide else 0.3),
        "TranslateX": line(32.0 if wide else 150.0 / 331.0 * width),
        "TranslateY": line(32.0 if wide else 150.0 / 331.0 * height),
        "Rotate": line(135.0 if wide else 30.0),
        "Posterize": (8 - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4)))).round().int(),
        "Solarize": line(0.0, 1.0),
    }
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        table[name] = line(0.99 if wide else 0.9)
    out = torch.zeros(len(OPS), bins, dtype=torch.float64)
    for name, values in table.items():
        out[INDEX[name]] = values.double()
    return out


class BatchAugmentPolicy:
    """torchvision's TrivialAugmentWide, RandAugment or AutoAugment (ImageNet), each image its own ops.

    On float images in pixel units (integer values 0..255, as uint8); results are rounded and clamped
    as torchvision's uint8 kernels do, so that they match torchvision's within a grey level. `fill` is the
    per-channel colour, in pixel units, of what the geometric ops uncover (torchvision's `fill`).
    """

    def __init__(self, policy: str, fill: Sequence[float], generator: torch.Generator):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.policy = policy
        self.fill = [float(v) for v in fill]
        self.generator = generator  # a CPU generator: the same draws on every device
        self._fills: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._kernels: dict[tuple[torch.device, int], torch.Tensor] = {}
        steps = [[(INDEX[name], p, -1 if bin_ is None else bin_) for name, p, bin_ in sub] for sub in IMAGENET]
        self._sub_policies = torch.tensor(steps, dtype=torch.float64)  # 25 x 2 x (op, probability, bin)

    @property
    def active(self) -> bool:
        """False for "none" (then the batch passes unchanged and nothing is drawn)."""
        return self.policy != "none"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x 3 x H x W, pixel units 0..255 (integer values) -> the same, each image augmented."""
        if not self.active:
            return images
        n, _, height, width = images.shape
        for ops, magnitudes in self.draw(n, height, width):
            images = self.apply(images, ops, magnitudes)
        return images

    def draw(self, n: int, height: int, width: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ops to apply in turn, on the CPU: [(op indices into OPS, signed magnitudes)], one entry a step."""
        g = self.generator
        signed = torch.tensor([name in SIGNED for name in OPS])

        def with_sign(ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
            # torchvision negates a signed op's magnitude with probability 0.5.
            negative = (torch.rand(n, generator=g) < 0.5) & signed[ops]
            return torch.where(negative, -magnitudes, magnitudes)

        if self.policy == "trivial_wide":
            table = magnitude_table(self.policy, BINS, height, width)
            ops = torch.randint(CHOSEN, (n,), generator=g)
            bins = torch.randint(BINS, (n,), generator=g)
            return [(ops, with_sign(ops, table[ops, bins]))]
        if self.policy == "randaugment":
            table = magnitude_table(self.policy, BINS, height, width)
            steps = []
            for _ in range(RANDAUGMENT_OPS):
                ops = torch.randint(CHOSEN, (n,), generator=g)
                steps.append((ops, with_sign(ops, table[ops, RANDAUGMENT_MAGNITUDE])))
            return steps
        # AutoAugment: one sub-policy per image; each of its two steps applies with its own probability.
        table = magnitude_table(self.policy, AUTOAUGMENT_BINS, height, width)
        chosen = self._sub_policies[torch.randint(len(IMAGENET), (n,), generator=g)]  # n x 2 x 3
        steps = []
        for step in range(2):
            op, probability, bin_ = chosen[:, step].unbind(1)
            applies = torch.rand(n, generator=g) < probability
            ops = torch.where(applies, op.long(), INDEX["Identity"])
            magnitudes = table[ops, bin_.long().clamp(min=0)]
            steps.append((ops, with_sign(ops, magnitudes)))
        return steps

    def apply(self, images: torch.Tensor, ops: torch.Tensor | Sequence[str],
              magnitudes: torch.Tensor) -> torch.Tensor:
        """Apply one op per image: ops (indices into OPS or names) and signed magnitudes, in torchvision's units.

        Magnitudes are what torchvision's _apply_image_or_video_transform takes: shear as tan, translation in
        pixels, rotation in degrees, factor - 1 for the colour ops, bits for Posterize, threshold / 255 for
        Solarize (ignored by the magnitude-free ops). Images are grouped by op, not by op and magnitude.
        """
        if not isinstance(ops, torch.Tensor):
            ops = torch.tensor([INDEX[name] for name in ops])
        ops, magnitudes = ops.cpu().long(), magnitudes.cpu().double()
        _, channels, height, width = images.shape
        fmt = memory_format_of(images)
        x = images.float()
        out = x.clone()
        geometric = sum(ops == INDEX[name] for name in GEOMETRIC).bool()
        groups = [(geometric, self._geometric)]
        groups += [(ops == INDEX[name], getattr(self, f"_{name.lower()}")) for name in OPS
                   if name not in GEOMETRIC and name != "Identity"]
        for chosen, function in groups:
            if not chosen.any():
                continue
            index = chosen.nonzero()[:, 0]  # on the CPU: no wait for the GPU
            device_index = to_device(index, images.device)
            result = function(x.index_select(0, device_index), ops[index], magnitudes[index])
            out.index_copy_(0, device_index, result)
        return out.to(images.dtype).contiguous(memory_format=fmt)

    # --- the ops: x is a float32 k x C x H x W group in pixel units, m its k signed magnitudes (CPU, float64) ---

    def _factor(self, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Per-image float32 scalars as k x 1 x 1 x 1 on the device (torchvision passes them as float scalars)."""
        return to_device(values.float().view(-1, 1, 1, 1), device)

    def _geometric(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """ShearX/Y, TranslateX/Y and Rotate with per-image inverse matrices: one affine grid, one grid_sample."""
        k, _, height, width = x.shape
        zero = torch.zeros_like(m)
        is_op = {name: ops == INDEX[name] for name in GEOMETRIC}
        # The arguments torchvision's _apply_image_or_video_transform gives F.affine / F.rotate, per image.
        shear = torch.rad2deg(torch.atan(m))  # math.degrees(math.atan(magnitude))
        shear_x = torch.where(is_op["ShearX"], shear, zero)
        shear_y = torch.where(is_op["ShearY"], shear, zero)
        # Shears are about the top-left corner (center=[0, 0]); the rest about the image centre.
        corner = is_op["ShearX"] | is_op["ShearY"]
        cx = torch.where(corner, -width * 0.5, zero)
        cy = torch.where(corner, -height * 0.5, zero)
        tx = torch.where(is_op["TranslateX"], m.trunc(), zero)  # int(magnitude): towards zero
        ty = torch.where(is_op["TranslateY"], m.trunc(), zero)
        # rotate_image takes angle % 360 and passes -angle to the affine matrix (its opposite sense).
        angle = torch.where(is_op["Rotate"], -torch.remainder(m, 360.0), zero)
        theta = inverse_affine(cx, cy, angle, tx, ty, shear_x, shear_y)
        grid = affine_grid(to_device(theta.float(), x.device), width, height)
        # grid_sample pads with zeros: shifting by the fill colour first makes it pad with the fill. Nearest
        # sampling copies pixels exactly; rounding (as torchvision's uint8 path does) only rounds the fill.
        fill = self._fill(x)
        return (F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
                + fill).round_().clamp_(0, 255)

    def _brightness(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """adjust_brightness(1 + m): scale, clamp, truncate (uint8 conversion truncates)."""
        return (x * self._factor(1.0 + m, x.device)).clamp_(0, 255).trunc_()

    def _color(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """adjust_saturation(1 + m): blend with the floored grey image."""
        return blend(x, grey(x), 1.0 + m)

    def _contrast(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """adjust_contrast(1 + m): blend with the mean of the floored grey image."""
        return blend(x, grey(x).mean(dim=(-3, -2, -1), keepdim=True), 1.0 + m)

    def _sharpness(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """adjust_sharpness(1 + m): blend the inner pixels with a rounded 3x3 smoothing (border unchanged)."""
        channels, height, width = x.shape[-3:]
        if height <= 2 or width <= 2:
            return x
        blurred = F.conv2d(x, self._kernel(x.device, channels), groups=channels).round_()
        out = x.clone()
        inner = out[..., 1:-1, 1:-1]
        # x + (1 - factor) * (blurred - x), with 1 - factor in float64 as torchvision's Python floats.
        inner.add_((blurred - inner) * self._factor(1.0 - (1.0 + m), x.device))
        return out.clamp_(0, 255).trunc_()

    def _posterize(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """posterize(bits): keep the top `bits` bits (x & mask as a floor to a multiple of 2 ** (8 - bits))."""
        step = self._factor(torch.pow(2.0, 8 - m.trunc()), x.device)
        return torch.floor(x / step) * step

    def _solarize(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """solarize(255 * m): invert the pixels at or above the threshold."""
        return torch.where(x >= self._factor(255.0 * m, x.device), 255 - x, x)

    def _autocontrast(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """autocontrast: stretch each channel to 0..255 (as autocontrast_image, without a masked assignment)."""
        low = x.amin(dim=(-2, -1), keepdim=True)
        high = x.amax(dim=(-2, -1), keepdim=True)
        flat = high == low  # a flat channel is left as it is
        inv_scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255.0))
        low = torch.where(flat, 0.0, low)
        return ((x - low) / inv_scale).clamp_(0, 255).trunc_()

    def _equalize(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """equalize: torchvision's own batched kernel on uint8 (its histograms are per image and channel)."""
        return TF.equalize(x.to(torch.uint8)).float()

    def _invert(self, x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """invert: 255 - x."""
        return 255 - x

    def _fill(self, x: torch.Tensor) -> torch.Tensor:
        """The fill colour as 1 x C x 1 x 1 on the device, made once per device."""
        key = (x.device, x.dtype)
        if key not in self._fills:
            self._fills[key] = to_device(torch.tensor(self.fill, dtype=x.dtype).view(1, -1, 1, 1), x.device)
        return self._fills[key]

    def _kernel(self, device: torch.device, channels: int) -> torch.Tensor:
        """adjust_sharpness's 3x3 kernel (1s around a 5, over 13) for a depthwise conv2d, made once per device."""
        key = (device, channels)
        if key not in self._kernels:
            a, b = 1.0 / 13.0, 5.0 / 13.0
            kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]]).expand(channels, 1, 3, 3).contiguous()
            self._kernels[key] = to_device(kernel, device)
        return self._kernels[key]


def grey(x: torch.Tensor) -> torch.Tensor:
    """rgb_to_grayscale as torchvision's uint8 colour ops use it: the same float32 sum, floored."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(-3)


def blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend per image: x * ratio + other * (1 - ratio), clamped and truncated as uint8."""
    device = x.device
    keep = to_device(ratio.float().view(-1, 1, 1, 1), device)
    mix = to_device((1.0 - ratio).float().view(-1, 1, 1, 1), device)
    return (x * keep).add_(other * mix).clamp_(0, 255).trunc_()


def inverse_affine(cx: torch.Tensor, cy: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                   shear_x: torch.Tensor, shear_y: torch.Tensor) -> torch.Tensor:
    """torchvision's _get_inverse_affine_matrix (scale 1) for k images at once: k x 2 x 3, float64."""
    rot, sx, sy = angle * (math.pi / 180), shear_x * (math.pi / 180), shear_y * (math.pi / 180)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    # det([[a, b], [c, d]]) == 1: the inverse is [[d, -b], [-c, a]], then the centre and translation.
    m2 = d * (-cx - tx) + (-b) * (-cy - ty) + cx
    m5 = (-c) * (-cx - tx) + a * (-cy - ty) + cy
    return torch.stack([torch.stack([d, -b, m2], 1), torch.stack([-c, a, m5], 1)], 1)


def affine_grid(theta: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """torchvision's _affine_grid with a matrix per image: pixel-unit matrices to grid_sample's k x H x W x 2."""
    # The same float32 steps as torchvision's (centred pixel coordinates, matrix, then normalise), so that
    # nearest sampling picks the same pixels, ties included.
    device = theta.device
    base = torch.empty(1, height, width, 3, dtype=theta.dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height,
                                      device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).clone()
    rescaled[..., 0] /= 0.5 * width
    rescaled[..., 1] /= 0.5 * height
    k = theta.shape[0]
    return base.view(1, height * width, 3).expand(k, -1, -1).bmm(rescaled).view(k, height, width, 2)
