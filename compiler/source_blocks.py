"""The source of the building blocks an emitted network is made of: one method a class (dense layer,
two-way layer, dense block, transitions, stem block, blur pool, the skip wiring) and the helpers
beside them, written for the network's dimension, normalisation and activation. compiler/source.py
decides which of them a network needs and writes the network itself.
"""

from __future__ import annotations

import inspect

from dsl import spec

WIDTH = 88
INDENT = "    "


def _call(indent: str, head: str, args: list[str], tail: str = ")", width: int = WIDTH) -> list[str]:
    """`head(args)` at `indent`, wrapped as ruff wraps a call that does not fit on one line."""
    one = f"{indent}{head}{', '.join(args)}{tail}"
    if len(one) <= width or not args:
        return [one]
    inner = indent + INDENT + ", ".join(args)
    if len(inner) <= width:
        return [f"{indent}{head}", inner, f"{indent}{tail}"]
    return [f"{indent}{head}", *(f"{indent}{INDENT}{a}," for a in args), f"{indent}{tail}"]


class BlockSource:
    """Needs, from the writer: `d` (spatial dimensions), `nn(name)`, `normalization`, `activation`,
    and the flags of what the network uses (`bottleneck`, `dropout`, `bias`, `blur`, ...)."""

    def dense_layer(self) -> list[str]:
        both = len(self.bottleneck) == 2
        has_bottleneck = True in self.bottleneck
        args = ["in_channels: int", "growth: int"]
        if has_bottleneck:
            args.append("bottleneck: int | None" if both else "bottleneck: int")
        if self.dropout:
            args.append("dropout: float = 0.0")
        if self.bias:
            args.append("bias: bool = False")
        args.append("memory_efficient: bool = False")
        if both:
            doc = [
                '"""BN-ReLU-Conv(3x3) to `growth` channels over the concatenation of all earlier',
                "feature maps of the block; with a bottleneck, BN-ReLU-Conv(1x1) to",
                '`bottleneck * growth` channels first (DenseNet-B)."""',
            ]
        elif has_bottleneck:
            doc = [
                '"""BN-ReLU-Conv(1x1) to `bottleneck * growth` channels, then BN-ReLU-Conv(3x3)',
                "to `growth` channels, over the concatenation of all earlier feature maps of the",
                'block."""',
            ]
        else:
            doc = [
                '"""BN-ReLU-Conv(3x3) to `growth` channels over the concatenation of all earlier',
                'feature maps of the block."""',
            ]
        out = ["class DenseLayer(nn.Module):", *(INDENT + d for d in doc), ""]
        out += _call(INDENT, "def __init__(", ["self", *args], ") -> None:")
        i2, i3 = INDENT * 2, INDENT * 3
        out.append(f"{i2}super().__init__()")
        drop = "nn.Dropout(dropout) if dropout else nn.Identity()" if self.dropout else None
        bias = "bias" if self.bias else "False"
        three = ["kernel_size=3", "padding=1"]
        if both:
            out.append(f"{i2}width = bottleneck * growth if bottleneck else growth")
            first = ["kernel_size=1 if bottleneck else 3", "padding=0 if bottleneck else 1"]
            out += self.stage(i2, "1", "in_channels", "width", first, drop, bias)
            out.append(f"{i2}if bottleneck:")
            out += self.stage(i3, "2", "width", "growth", three, drop, bias)
        elif has_bottleneck:
            out += self.stage(i2, "1", "in_channels", "bottleneck * growth", ["kernel_size=1"], drop, bias)
            out += self.stage(i2, "2", "bottleneck * growth", "growth", three, drop, bias)
        else:
            out += self.stage(i2, "1", "in_channels", "growth", three, drop, bias)
        out.append(f"{i2}self.memory_efficient = memory_efficient")
        out.append("")
        out += self.layer_forward(both, has_bottleneck)
        return [*out, "", *self.first_stage()]

    def stage(
        self, indent: str, n: str, c_in: str, c_out: str, window: list[str], drop: str | None, bias: str = "False"
    ) -> list[str]:
        """BN-ReLU-Conv(-Dropout) named with suffix `n`: `norm1`, `relu1`, `conv1`, `drop1`."""
        norm, norm_args = self.norm(c_in)
        act, act_args = self.act()
        out = [
            f"{indent}self.norm{n} = {norm}({', '.join(norm_args)})",
            f"{indent}self.relu{n} = {act}({', '.join(act_args)})",
        ]
        bias_arg = [] if bias == "True" else [f"bias={bias}"]
        out += _call(indent, f"self.conv{n} = {self.nn('Conv')}(", [c_in, c_out, *window, *bias_arg])
        if drop is not None:
            out.append(f"{indent}self.drop{n} = {drop}")
        return out

    def norm(self, c_in: str, kind: str | None = None) -> tuple[str, list[str]]:
        """The constructor of the network's normalisation (as compiler.emit builds it)."""
        kind = kind or self.normalization
        if kind == "batch":
            return self.nn("BatchNorm"), [c_in]
        if kind == "instance":
            return self.nn("InstanceNorm"), [c_in, "affine=True"]
        return "nn.GroupNorm", ["1" if kind == "layer" else kind[len("group(") : -1], c_in]

    def act(self, kind: str | None = None) -> tuple[str, list[str]]:
        kind = kind or self.activation
        return {
            "relu": ("nn.ReLU", ["inplace=True"]),
            "relu6": ("nn.ReLU6", ["inplace=True"]),
            "prelu": ("nn.PReLU", []),
            "silu": ("nn.SiLU", []),
        }.get(kind, ("nn.GELU", []))

    def layer_forward(self, both: bool, has_bottleneck: bool) -> list[str]:
        i2, i3 = INDENT * 2, INDENT * 3
        out = [f"{INDENT}def forward(self, features: list[Tensor]) -> Tensor:"]
        out.append(f"{i2}if self.memory_efficient and torch.is_grad_enabled():")
        out.append(f"{i3}x = self.first_stage_recomputed(features)")
        out.append(f"{i2}else:")
        out.append(f"{i3}x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))")
        if self.dropout:
            out.append(f"{i2}x = self.drop1(x)")
        if both:
            out.append(f'{i2}if hasattr(self, "conv2"):')
            out.append(f"{i3}x = self.conv2(self.relu2(self.norm2(x)))")
            if self.dropout:
                out.append(f"{i3}x = self.drop2(x)")
        elif has_bottleneck:
            out.append(f"{i2}x = self.conv2(self.relu2(self.norm2(x)))")
            if self.dropout:
                out.append(f"{i2}x = self.drop2(x)")
        out.append(f"{i2}return x")
        return out

    def first_stage(self) -> list[str]:
        i2 = INDENT * 2
        return [
            f"{INDENT}def first_stage_recomputed(self, features: list[Tensor]) -> Tensor:",
            *(self.recompute_batch_norm() if self.normalization == "batch" else self.recompute_any()),
            "",
            f"{i2}# no RNG inside: nothing to stash (which a CUDA graph could not hold)",
            f"{i2}return checkpoint(",
            f"{i2}    stage, *features, use_reentrant=False, preserve_rng_state=False",
            f"{i2})",
        ]

    def recompute_batch_norm(self) -> list[str]:
        i2, i3, i4 = INDENT * 2, INDENT * 3, INDENT * 4
        return [
            f'{i2}"""Concat-BN-ReLU-Conv, recomputed in the backward pass instead of stored, so',
            f"{i2}that memory grows linearly with depth (Pleiss et al. 2017). The recomputation",
            f'{i2}uses the same batch statistics and leaves the running statistics alone."""',
            f"{i2}first = True",
            "",
            f"{i2}def stage(*inputs: Tensor) -> Tensor:",
            f"{i3}nonlocal first",
            f"{i3}x = torch.cat(inputs, 1)",
            f"{i3}if first:",
            f"{i4}x = self.norm1(x)",
            f"{i3}else:",
            f"{i4}n = self.norm1",
            f"{i4}mean, var = n.running_mean, n.running_var",
            f"{i4}batch = n.training or mean is None",
            f"{i4}x = F.batch_norm(x, mean, var, n.weight, n.bias, batch, 0.0, n.eps)",
            f"{i3}first = False",
            f"{i3}return self.conv1(self.relu1(x))",
        ]

    def recompute_any(self) -> list[str]:
        """Normalisations without running statistics recompute as they computed."""
        i2, i3 = INDENT * 2, INDENT * 3
        return [
            f'{i2}"""Concat-norm-activation-conv, recomputed in the backward pass instead of',
            f'{i2}stored, so that memory grows linearly with depth (Pleiss et al. 2017)."""',
            "",
            f"{i2}def stage(*inputs: Tensor) -> Tensor:",
            f"{i3}return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))",
        ]

    def dense_block(self) -> list[str]:
        i2, i3 = INDENT * 2, INDENT * 3
        args = ["self", "layers: int", "in_channels: int", "growth: int"]
        passed = ["in_channels + i * growth", "growth"]
        if True in self.bottleneck:
            args.append("bottleneck: int | None" if len(self.bottleneck) == 2 else "bottleneck: int")
            passed.append("bottleneck")
        if self.dropout:
            args.append("dropout: float = 0.0")
            passed.append("dropout")
        if self.bias:
            args.append("bias: bool = False")
            passed.append("bias")
        args.append("memory_efficient: bool = False")
        passed.append("memory_efficient")
        if self.concat_flags:
            args.append("concat_input: bool = True")
        out = [
            "class DenseBlock(nn.ModuleDict):",
            f'{INDENT}"""Feeds each layer the block\'s input and the new features of every earlier',
            f'{INDENT}layer; returns their concatenation."""',
            "",
        ]
        out += _call(INDENT, "def __init__(", args, ") -> None:")
        out.append(f"{i2}super().__init__()")
        if self.concat_flags:
            out.append(f"{i2}self.concat_input = concat_input")
        out.append(f"{i2}for i in range(layers):")
        layer = "TwoWayDenseLayer" if self.two_way else "DenseLayer"
        out += _call(i3, f'self[f"denselayer{{i + 1}}"] = {layer}(', passed)
        out += [
            "",
            f"{INDENT}def forward(self, x: Tensor) -> Tensor:",
            f"{i2}features = [x]",
            f"{i2}for layer in self.values():",
            f"{i3}features.append(layer(features))",
            f"{i2}return torch.cat(features if self.concat_input else features[1:], 1)"
            if self.concat_flags
            else f"{i2}return torch.cat(features, 1)",
        ]
        return out

    def transition_down(self) -> list[str]:
        i2 = INDENT * 2
        out = [
            "class TransitionDown(nn.Sequential):",
            f'{INDENT}"""BN-ReLU-Conv(1x1, every channel)-Dropout-MaxPool(2): FC-DenseNet\'s way down."""',
            "",
            f"{INDENT}def __init__(self, channels: int, dropout: float = 0.0) -> None:",
            f"{i2}super().__init__()",
            *self.stage(i2, "", "channels", "channels", ["kernel_size=1"], None, "True"),
            f"{i2}if dropout:",
            f"{i2}{INDENT}self.drop = nn.Dropout(dropout)",
            f"{i2}self.pool = {self.nn('MaxPool')}(kernel_size=2, stride=2)",
        ]
        return out

    def transition_up(self) -> list[str]:
        i2 = INDENT * 2
        return [
            "class TransitionUp(nn.Module):",
            f'{INDENT}"""A 3x3 stride-2 transposed convolution, centre-cropped to the size of the kept',
            f'{INDENT}feature maps `skip`, then concatenated with them: FC-DenseNet\'s way up."""',
            "",
            f"{INDENT}def __init__(self, channels: int) -> None:",
            f"{i2}super().__init__()",
            f"{i2}self.conv = {self.nn('ConvTranspose')}(channels, channels, kernel_size=3, stride=2)",
            "",
            f"{INDENT}def forward(self, x: Tensor, skip: Tensor) -> Tensor:",
            f"{i2}x = self.conv(x)",
            f"{i2}size = skip.shape[2:]",
            f"{i2}starts = [(a - b) // 2 for a, b in zip(x.shape[2:], size, strict=True)]",
            f"{i2}x = x[(..., *(slice(s, s + n) for s, n in zip(starts, size, strict=True)))]",
            f"{i2}return torch.cat([x, skip], 1)",
        ]

    def features(self) -> list[str]:
        i2, i3 = INDENT * 2, INDENT * 3
        return [
            "class Features(nn.Sequential):",
            f'{INDENT}"""The parts in order; `keeps` names the outputs kept for skip connections and',
            f'{INDENT}`joins` the kept maps each transition up takes as its second input."""',
            "",
            f"{INDENT}def __init__(self, keeps: dict[str, list[str]], joins: dict[str, str]) -> None:",
            f"{i2}super().__init__()",
            f"{i2}self.keeps, self.joins = keeps, joins",
            "",
            f"{INDENT}def forward(self, x: Tensor) -> Tensor:",
            f'{i2}kept = dict.fromkeys(self.keeps.get("", []), x)',
            f"{i2}for name, module in self.named_children():",
            f"{i3}x = module(x, kept[self.joins[name]]) if name in self.joins else module(x)",
            f"{i3}for key in self.keeps.get(name, []):",
            f"{i3}{INDENT}kept[key] = x",
            f"{i2}return x",
        ]

    def transition(self) -> list[str]:
        i2 = INDENT * 2
        args = ["self", "in_channels: int", "out_channels: int"]
        if self.transition_dropout:
            args.append("dropout: float = 0.0")
        if self.blur:
            args.append("blur: bool = False")
        out = [
            "class Transition(nn.Sequential):",
            f'{INDENT}"""BN-ReLU-Conv(1x1) to `out_channels` (compression), then 2x average pooling."""',
            "",
        ]
        if self.no_pool:
            args.append("pool: bool = True")
        out += _call(INDENT, "def __init__(", args, ") -> None:")
        out.append(f"{i2}super().__init__()")
        stage = self.stage(i2, "", "in_channels", "out_channels", ["kernel_size=1"], None)
        if True in self.conv_first:  # Conv-BN-activation, as PeleeNet
            out[1] = f'{INDENT}"""Conv(1x1)-BN-ReLU to `out_channels`, then 2x average pooling."""'
            stage = stage[2:] + stage[:2]
        out += stage
        if self.transition_dropout:
            out.append(f"{i2}if dropout:")
            out.append(f"{i2}{INDENT}self.drop = nn.Dropout(dropout)")
        average = f"{self.nn('AvgPool')}(kernel_size=2, stride=2)"
        if self.no_pool:
            out += [f"{i2}if pool:", f"{i2}{INDENT}self.pool = {average}"]
        elif self.blur:
            out += [f"{i2}if blur:", f"{i2}{INDENT}self.pool = BlurPool(out_channels)", f"{i2}else:"]
            out.append(f"{i2}{INDENT}self.pool = {average}")
        else:
            out.append(f"{i2}self.pool = {average}")
        return out

    def conv_norm_act(self) -> list[str]:
        i2 = INDENT * 2
        norm, norm_args = self.norm("out_channels")
        act, act_args = self.act()
        return [
            "class ConvNormAct(nn.Sequential):",
            f'{INDENT}"""Conv-BN-activation, in PeleeNet\'s order."""',
            "",
            *_call(
                INDENT,
                "def __init__(",
                ["self", "in_channels: int", "out_channels: int", "kernel: int", "stride: int = 1"],
                ") -> None:",
            ),
            f"{i2}super().__init__()",
            *_call(
                i2,
                f"self.conv = {self.nn('Conv')}(",
                ["in_channels", "out_channels", "kernel", "stride", "padding=kernel // 2", "bias=False"],
            ),
            f"{i2}self.norm = {norm}({', '.join(norm_args)})",
            f"{i2}self.relu = {act}({', '.join(act_args)})",
        ]

    def two_way_width(self) -> list[str]:
        """The rule of dsl/spec.py, copied: the language and this file compute the width alike."""
        return inspect.getsource(spec.two_way_width).rstrip().splitlines()

    def two_way_layer(self) -> list[str]:
        i2, i3, i4 = INDENT * 2, INDENT * 3, INDENT * 4
        return [
            "class TwoWayDenseLayer(nn.Module):",
            f'{INDENT}"""PeleeNet\'s dense layer: a 1x1-3x3 and a 1x1-3x3-3x3 branch of growth/2 maps each',
            f'{INDENT}over the concatenation of all earlier feature maps of the block."""',
            "",
            *_call(
                INDENT,
                "def __init__(",
                ["self", "in_channels: int", "growth: int", "bottleneck: int", "memory_efficient: bool = False"],
                ") -> None:",
            ),
            f"{i2}super().__init__()",
            f"{i2}half = growth // 2",
            f"{i2}width = two_way_width(growth, bottleneck, in_channels)",
            f"{i2}self.branch1a = ConvNormAct(in_channels, width, 1)",
            f"{i2}self.branch1b = ConvNormAct(width, half, 3)",
            f"{i2}self.branch2a = ConvNormAct(in_channels, width, 1)",
            f"{i2}self.branch2b = ConvNormAct(width, half, 3)",
            f"{i2}self.branch2c = ConvNormAct(half, half, 3)",
            f"{i2}self.memory_efficient = memory_efficient",
            "",
            f"{INDENT}def forward(self, features: list[Tensor]) -> Tensor:",
            f"{i2}if self.memory_efficient and torch.is_grad_enabled():",
            f"{i3}a, b = self.entry_recomputed(features)",
            f"{i2}else:",
            f"{i3}x = torch.cat(features, 1)",
            f"{i3}a, b = self.branch1a(x), self.branch2a(x)",
            f"{i2}return torch.cat([self.branch1b(a), self.branch2c(self.branch2b(b))], 1)",
            "",
            f"{INDENT}def entry_recomputed(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:",
            f'{i2}"""Concat and both 1x1 Conv-BN-activations, recomputed in the backward pass with',
            f'{i2}the batch statistics frozen, instead of stored (Pleiss et al. 2017)."""',
            f"{i2}first = True",
            "",
            f"{i2}def entry(*inputs: Tensor) -> tuple[Tensor, Tensor]:",
            f"{i3}nonlocal first",
            f"{i3}x = torch.cat(inputs, 1)",
            f"{i3}with contextlib.nullcontext() if first else frozen_statistics(self):",
            f"{i4}out = self.branch1a(x), self.branch2a(x)",
            f"{i3}first = False",
            f"{i3}return out",
            "",
            f"{i2}return checkpoint(",
            f"{i2}    entry, *features, use_reentrant=False, preserve_rng_state=False",
            f"{i2})",
        ]

    def frozen_statistics(self) -> list[str]:
        i2, i3 = INDENT * 2, INDENT * 3
        return [
            "@contextlib.contextmanager",
            "def frozen_statistics(module: nn.Module) -> Iterator[None]:",
            f'{INDENT}"""Batch norms that normalise as in training but keep their running statistics."""',
            f"{INDENT}batch_norm = nn.modules.batchnorm._BatchNorm",
            f"{INDENT}norms = [m for m in module.modules() if isinstance(m, batch_norm)]",
            f"{INDENT}saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]",
            f"{INDENT}for m in norms:",
            f"{i2}m.momentum = 0.0",
            f"{INDENT}try:",
            f"{i2}yield",
            f"{INDENT}finally:",
            f"{i2}for m, (momentum, count) in zip(norms, saved, strict=True):",
            f"{i3}m.momentum = momentum",
            f"{i3}m.num_batches_tracked.copy_(count)",
        ]

    def stem_block(self) -> list[str]:
        i2 = INDENT * 2
        return [
            "class StemBlock(nn.Module):",
            f'{INDENT}"""PeleeNet\'s stem: a stride-2 3x3 conv, then a stride-2 max pool beside a 1x1-3x3',
            f'{INDENT}(stride 2) branch, concatenated and fused by a 1x1 conv."""',
            "",
            f"{INDENT}def __init__(self, in_channels: int, channels: int) -> None:",
            f"{i2}super().__init__()",
            f"{i2}self.stem1 = ConvNormAct(in_channels, channels, 3, stride=2)",
            f"{i2}self.stem2a = ConvNormAct(channels, channels // 2, 1)",
            f"{i2}self.stem2b = ConvNormAct(channels // 2, channels, 3, stride=2)",
            f"{i2}self.pool = {self.nn('MaxPool')}(kernel_size=2, stride=2)",
            f"{i2}self.stem3 = ConvNormAct(2 * channels, channels, 1)",
            "",
            f"{INDENT}def forward(self, x: Tensor) -> Tensor:",
            f"{i2}x = self.stem1(x)",
            f"{i2}return self.stem3(torch.cat([self.pool(x), self.stem2b(self.stem2a(x))], 1))",
        ]

    def blur_pool(self) -> list[str]:
        i2 = INDENT * 2
        taps = (
            "taps",
            "taps[:, None] * taps[None, :]",
            "taps[:, None, None] * taps[None, :, None] * taps[None, None, :]",
        )
        return [
            "class BlurPool(nn.Module):",
            f'{INDENT}"""Anti-aliased downsampling (Zhang 2019): reflect padding, a fixed binomial blur',
            f'{INDENT}of each channel, then subsampling (as timm\'s BlurPool2d)."""',
            "",
            f"{INDENT}def __init__(self, channels: int, kernel: int = 3, stride: int = 2) -> None:",
            f"{i2}super().__init__()",
            f"{i2}self.channels, self.stride = channels, stride",
            f"{i2}self.padding = ((stride - 1) + (kernel - 1)) // 2",
            f"{i2}binomial = [math.comb(kernel - 1, k) for k in range(kernel)]",
            f"{i2}taps = torch.tensor(binomial, dtype=torch.float32)",
            f"{i2}filt = {taps[self.d - 1]}",
            f"{i2}filt = (filt / filt.sum()).expand(channels, 1, *filt.shape).contiguous()",
            f'{i2}self.register_buffer("filt", filt, persistent=False)',
            "",
            f"{INDENT}def forward(self, x: Tensor) -> Tensor:",
            f'{i2}x = F.pad(x, [self.padding] * {2 * self.d}, mode="reflect")',
            f"{i2}filt = self.filt.to(x.dtype)",
            f"{i2}return F.conv{self.d}d(x, filt, stride=self.stride, groups=self.channels)",
        ]

    def global_pool(self) -> list[str]:
        return [
            "class GlobalAvgPool(nn.Module):",
            f'{INDENT}"""The mean over every spatial dimension: (N, C, *S) -> (N, C)."""',
            "",
            f"{INDENT}def forward(self, x: Tensor) -> Tensor:",
            f"{INDENT * 2}return x.mean(dim=tuple(range(2, x.dim())))",
        ]

    def initialise(self) -> list[str]:
        d = self.d
        return [
            "def initialise(model: nn.Module) -> None:",
            f'{INDENT}"""The paper\'s initialisation: He-normal convolutions (fan out), norm weight',
            f'{INDENT}1 and bias 0, linear bias 0."""',
            f"{INDENT}for m in model.modules():",
            f"{INDENT * 2}if isinstance(m, nn.Conv{d}d):",
            f'{INDENT * 3}nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")',
            f"{INDENT * 2}elif isinstance(m, {self.norm('')[0]}):",
            f"{INDENT * 3}nn.init.ones_(m.weight)",
            f"{INDENT * 3}nn.init.zeros_(m.bias)",
            f"{INDENT * 2}elif isinstance(m, nn.Linear):",
            f"{INDENT * 3}nn.init.zeros_(m.bias)",
        ]

    def load_weights(self) -> list[str]:
        i2, i3 = INDENT * 2, INDENT * 3
        return [
            "def load_weights(path: str) -> dict[str, Tensor]:",
            f'{INDENT}"""The model weights in a dnetc checkpoint (its checksum verified) or in a file',
            f'{INDENT}holding a plain state_dict. Nothing in the file is executed (weights_only)."""',
            f'{INDENT}with open(path, "rb") as f:',
            f"{i2}data = f.read()",
            f'{INDENT}if data.startswith(b"DNETC-CHECKPOINT/2 sha256="):  # a header line, then the state',
            f'{i2}header, _, data = data.partition(b"\\n")',
            f'{i2}if hashlib.sha256(data).hexdigest().encode() != header.split(b"=", 1)[1]:',
            f'{i3}raise ValueError(f"{{path}} is corrupt: its checksum does not match")',
            f'{INDENT}state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)',
            f'{INDENT}if isinstance(state, dict) and state.get("format") == "dnetc-checkpoint/1":',
            f'{i2}payload = bytes(state["payload"].untyped_storage())',
            f'{i2}if hashlib.sha256(payload).hexdigest() != state["sha256"]:',
            f'{i3}raise ValueError(f"{{path}} is corrupt: its checksum does not match")',
            f'{i2}state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)',
            f'{INDENT}return state["model"] if isinstance(state, dict) and "model" in state else state',
        ]
