"""The validated spec: pydantic models of a network, as the evaluator produces it.

The models double as the signatures of the language's operations: a call's positional
arguments fill the fields in the order written here, keywords name them, and each field's
description is the help a user sees when a value is wrong.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.json_schema import SkipJsonSchema

from .errors import DnetError, Span

# Limits that keep an absurd spec from hanging or exhausting memory: beyond them, a clear error.
MAX_LAYERS_PER_BLOCK = 1000
MAX_TOTAL_LAYERS = 2000
MAX_CHANNELS = 1 << 20
MAX_SIZE = 1 << 20
MAX_REPEAT = 1000
MAX_SPATIAL_DIMS = 3


# How the compiler may lower dense blocks: a name of compiler/lowerings.py (checked there, when the graph
# is built, as the compiler knows its lowerings), or `auto`.
Lowering = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

# What `normalization` and `activation` may choose: names in the language, like numbers (`--set act=silu`).
NORMALIZATIONS = ("batch", "instance", "layer")  # and group(G): G groups of channels
ACTIVATIONS = ("relu", "prelu", "silu", "gelu", "relu6")
NORMALIZATION_PATTERN = r"^(batch|instance|layer|group\([1-9][0-9]*\))$"
Normalization = Annotated[
    str,
    Field(
        pattern=NORMALIZATION_PATTERN,
        description="every `norm` of the network: batch (running statistics), instance, layer (one group of "
        "all channels) or group(G); all learn a scale and shift per channel",
    ),
]
Activation = Annotated[
    Literal["relu", "prelu", "silu", "gelu", "relu6"],
    Field(
        description="every activation of the network (prelu: one learned slope; relu6: HarDNet's, min(max(0, x), 6))"
    ),
]

PositiveInt = Annotated[int, Field(gt=0)]
Size = PositiveInt | tuple[PositiveInt, ...]
NonNegativeSize = Annotated[int, Field(ge=0)] | tuple[Annotated[int, Field(ge=0)], ...]
Rate = Annotated[
    float, Field(ge=0.0, lt=1.0, description="a dropout rate, 0 <= p < 1 (0.2 in the paper without augmentation)")
]


class Node(BaseModel):
    """Common ground of every spec item: strict about unknown fields, remembers where it was written."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    span: SkipJsonSchema[Span | None] = Field(default=None, exclude=True, repr=False)

    # fields given only by name: switches whose meaning a bare `true` would hide
    keyword_only: ClassVar[tuple[str, ...]] = ()
    # fields that take a user-defined layer, expanded by the caller of the evaluator (dsl/layers.py)
    layer_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def argument_names(cls) -> list[str]:
        """The fields a call fills, in positional order."""
        return [n for n in cls.model_fields if n not in ("kind", "span")]

    @classmethod
    def positional_names(cls) -> list[str]:
        """The fields a call may fill by position."""
        return [n for n in cls.argument_names() if n not in cls.keyword_only]


# ---- operations inside a stem or head ------------------------------------------------------


class Conv(Node):
    """A convolution, without bias as DenseNet has it unless `bias = true` (FC-DenseNet)."""

    kind: Literal["conv"] = "conv"
    keyword_only = ("bias",)
    kernel: Size = Field(description="the kernel size: `3` or `3x3` (one size per spatial dimension)")
    channels: PositiveInt | None = Field(
        default=None, description="the number of output channels, > 0; `none` (or left out): the input's"
    )
    stride: Size = Field(default=1, description="the stride, > 0")
    padding: NonNegativeSize | None = Field(
        default=None, description="zero padding; by default dilation * (kernel - 1) // 2, which keeps the size"
    )
    dilation: Size = Field(default=1, description="the spacing of the kernel's taps, > 0")
    groups: PositiveInt = Field(
        default=1, description="split input and output channels into this many groups, each convolved alone"
    )
    bias: bool = Field(default=False, description="whether the convolution adds a learned bias per channel")


class DWConv(Node):
    """A depthwise convolution: one filter per channel (groups = channels), the channels kept."""

    kind: Literal["dwconv"] = "dwconv"
    keyword_only = ("bias",)
    kernel: Size = Field(default=3, description="the kernel size: `3` or `3x3`")
    stride: Size = Field(default=1, description="the stride, > 0")
    padding: NonNegativeSize | None = Field(default=None, description="zero padding; by default kernel // 2")
    dilation: Size = Field(default=1, description="the spacing of the kernel's taps, > 0")
    bias: bool = Field(default=False, description="whether the convolution adds a learned bias per channel")


class LearnedGroupConv(Node):
    """CondenseNet's learned group convolution (Huang et al. 2018), a 1x1 conv in its training form: during
    the first half of training it prunes 1/C of each group's input channels at each of C - 1 stages (the
    weakest by L1 norm), so that each of the G groups of outputs ends up reading 1/C of the inputs; a
    group-lasso term of weight `lasso` joins the loss until then. `dnetc SPEC --condense` converts it."""

    kind: Literal["lgconv"] = "lgconv"
    keyword_only = ("lasso",)
    channels: PositiveInt = Field(description="the number of output channels, a multiple of `groups`")
    groups: PositiveInt = Field(default=4, description="the groups G of output channels, each learning its inputs")
    condense: int = Field(default=4, ge=2, description="the condensation factor C: each group keeps 1/C of the inputs")
    lasso: float = Field(default=0.0, ge=0.0, description="the group-lasso coefficient λ added to the loss")


class Select(Node):
    """An index-select of the input channels (CondenseNet's converted layers): `fraction` of them, in an
    order learned in training and set by the conversion (a buffer, not a parameter)."""

    kind: Literal["select"] = "select"
    fraction: float = Field(gt=0.0, le=8.0, description="how many channels it selects, as a fraction of the input's")


class Shuffle(Node):
    """Channel shuffle (ShuffleNet, CondenseNet): interleave `groups` groups of channels."""

    kind: Literal["shuffle"] = "shuffle"
    groups: PositiveInt = Field(description="the number of groups of channels, > 0, dividing the channels")


class SqueezeExcite(Node):
    """Squeeze-and-excitation (Hu et al. 2018): global pooling, a 1x1 conv to ratio·C channels, ReLU, a
    1x1 conv back to C, a sigmoid, and the input scaled by it per channel (both convs with bias)."""

    kind: Literal["se"] = "se"
    ratio: float = Field(default=0.25, gt=0.0, le=1.0, description="the squeezed width as a fraction of the channels")


class EffectiveSqueezeExcite(Node):
    """VoVNet-v2's effective SE (Lee and Park 2020): global pooling, one 1x1 conv (C to C, bias), a hard
    sigmoid, and the input scaled by it per channel."""

    kind: Literal["ese"] = "ese"


class Norm(Node):
    """Batch normalisation over the channels."""

    kind: Literal["norm"] = "norm"


class ReLU(Node):
    kind: Literal["relu"] = "relu"


class Act(Node):
    """The network's activation (`activation`, ReLU by default)."""

    kind: Literal["act"] = "act"


class Pool(Node):
    """A pooling window: what max and average pooling share."""

    keyword_only = ("ceil",)
    kernel: Size = Field(description="the window size, > 0")
    stride: Size | None = Field(default=None, description="the stride; by default the window size")
    padding: NonNegativeSize = Field(default=0, description="padding, at most half the window")
    ceil: bool = Field(default=False, description="round the output size up, as VoVNet's pools (ceil_mode)")


class MaxPool(Pool):
    kind: Literal["maxpool"] = "maxpool"


class AvgPool(Pool):
    kind: Literal["avgpool"] = "avgpool"


class BlurPool(Node):
    """Anti-aliased downsampling (Zhang 2019): a fixed binomial blur of each channel, then subsampling."""

    kind: Literal["blurpool"] = "blurpool"
    stride: PositiveInt = Field(default=2, description="the subsampling stride, > 0")
    kernel: int = Field(default=3, ge=2, le=7, description="the binomial filter's size, 2 to 7 (3 in timm)")


class StemBlock(Node):
    """PeleeNet's stem block (Wang et al. 2018): a stride-2 3x3 conv, then a stride-2 max pool beside a
    1x1-3x3 (stride 2) branch, concatenated and fused by a 1x1 conv; Conv-BN-activation throughout."""

    kind: Literal["stem_block"] = "stem_block"
    channels: PositiveInt = Field(description="the channels of its convolutions (32 in PeleeNet), > 1")


class Dropout(Node):
    kind: Literal["dropout"] = "dropout"
    p: Rate = 0.0


class Connectivity(BaseModel):
    """Which earlier feature maps each layer of a dense block reads, and which the block returns: a value
    of the language (`all`, `window(3)`, `harmonic(1.7)`, ...). Index 0 is the block's input, i the
    new maps of layer i. The compiler draws exactly these edges; shapes and counts follow them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["all", "window", "exponential", "harmonic", "aggregate", "partial", "dual"] = "all"
    value: float | None = Field(default=None, description="window(n): n; harmonic(m): m; partial(r): r; dual(r): r")

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}({self.value:g})"

    def links(self, i: int) -> list[int]:
        """The features layer i (from 1) reads, in the order they are concatenated."""
        if self.kind == "window":
            return list(range(max(0, i - int(self.value or 1)), i))
        if self.kind == "exponential":  # SparseNet (Zhu et al. 2018): offsets 1, 2, 4, 8, ...
            return sorted({i - 2**n for n in range(i.bit_length()) if i - 2**n >= 0})
        if self.kind == "harmonic":  # HarDNet (Chao et al. 2019): k - 2^n whenever 2^n divides k, nearest first
            return [i - 2**n for n in range(i.bit_length()) if i % 2**n == 0]
        if self.kind == "aggregate":  # VoVNet: each layer its predecessor alone
            return [i - 1]
        return list(range(i))

    def width(self, i: int, growth: int) -> int:
        """Layer i's new channels: the growth rate, HarDNet's growth·m^(links - 1) made even, or DPN's r
        residual channels and the growth rate's new ones."""
        if self.kind == "dual":
            return int(self.value or 0) + growth
        if self.kind != "harmonic":
            return growth
        out: float = growth
        for _ in self.links(i)[1:]:
            out *= self.value or 1.0
        return int(int(out + 1) / 2) * 2  # as HarDNet's code rounds it

    def outputs(self, layers: int, concat_input: bool) -> list[int]:
        """The features the block concatenates into its output (0, its input, only with `concat_input`)."""
        if self.kind == "harmonic":  # the odd layers and the last
            out = [i for i in range(1, layers + 1) if i % 2 == 1 or i == layers]
        elif self.kind in ("window", "exponential"):  # what a next layer would read
            out = [j for j in self.links(layers + 1) if j > 0]
            if 0 in self.links(layers + 1) and concat_input:
                out = [0, *out]
            return out
        else:
            out = list(range(1, layers + 1))
        return [0, *out] if concat_input else out


CONNECTIVITY_HELP = (
    "all (DenseNet), window(n) (the last n), exponential (SparseNet: offsets 1, 2, 4, ...), harmonic(m) "
    "(HarDNet), aggregate (VoVNet's one-shot aggregation), partial(r) (CSPNet: r of the channels bypass) or "
    "dual(r) (DPN: each layer adds its first r channels to a running residual and appends the rest)"
)


class Classifier(Node):
    """The paper's head: BN-ReLU-global average pool-Linear (with bias)."""

    kind: Literal["classifier"] = "classifier"
    keyword_only = ("keep",)
    classes: PositiveInt = Field(description="the number of classes, > 0")
    keep: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="the fraction of pooled features the linear layer reads, selected by a learned index "
        "(CondenseNet's converted classifier keeps 0.5)",
    )


class Branches(Node):
    """Parallel branches over the same input, joined by concatenating or adding their outputs
    (`concat { ... } { ... }`, `add { } { ... }`; an empty branch passes its input through)."""

    kind: Literal["concat", "add"]
    branches: list[list[LayerOp]] = Field(min_length=2)


class Composite(Node):
    """A user-defined layer (`layer NAME(...) { ... }`) as called: its arguments bound, its body expanded."""

    kind: Literal["layer"] = "layer"
    name: str = Field(description="the layer's name in the spec")
    arguments: dict[str, Any] = Field(default_factory=dict, description="the values of its parameters")
    ops: list[LayerOp]


LayerOp = Annotated[
    Conv
    | DWConv
    | Norm
    | ReLU
    | Act
    | MaxPool
    | AvgPool
    | BlurPool
    | Dropout
    | Shuffle
    | SqueezeExcite
    | EffectiveSqueezeExcite
    | LearnedGroupConv
    | Select
    | Branches
    | Composite,
    Field(discriminator="kind"),
]
Branches.model_rebuild()
Composite.model_rebuild()

StemOp = Annotated[
    Conv | Norm | ReLU | Act | MaxPool | AvgPool | BlurPool | StemBlock | Dropout | Composite,
    Field(discriminator="kind"),
]


class PixelClassifier(Node):
    """Segmentation's head: a 1x1 convolution (with bias) to one score per class at every position."""

    kind: Literal["pixel_classifier"] = "pixel_classifier"
    classes: PositiveInt = Field(description="the number of classes, > 0")


class LinearClassifier(Node):
    """Global average pooling, dropout and a linear layer, after a network that ends normalised (PeleeNet)."""

    kind: Literal["linear_classifier"] = "linear_classifier"
    classes: PositiveInt = Field(description="the number of classes, > 0")
    dropout: Rate = 0.0


HeadOp = Annotated[Classifier | PixelClassifier | LinearClassifier, Field(discriminator="kind")]
# a head or an exit: some of the language's layer operations and layers of one's own, then one classifier
BEFORE_CLASSIFIER = (Conv, DWConv, Norm, ReLU, Act, MaxPool, AvgPool, Dropout, SqueezeExcite)
HeadPart = Annotated[
    functools.reduce(operator.or_, (*BEFORE_CLASSIFIER, Composite, Classifier, PixelClassifier, LinearClassifier)),
    Field(discriminator="kind"),
]

# ---- the parts of a network ----------------------------------------------------------------


class DenseBlock(Node):
    """Layers each fed the concatenation of all earlier feature maps, each adding `growth` channels."""

    kind: Literal["dense"] = "dense"
    keyword_only = ("bias", "concat_input", "two_way", "connect", "layer", "fuse", "residual", "entry")
    layer_fields = ("layer", "fuse", "entry")
    layers: PositiveInt = Field(
        le=MAX_LAYERS_PER_BLOCK, description=f"the number of layers in the block, 1 to {MAX_LAYERS_PER_BLOCK}"
    )
    growth: PositiveInt = Field(le=MAX_CHANNELS, description="the growth rate k: channels each layer adds, > 0")
    bottleneck: PositiveInt | None = Field(
        default=4,
        description="the bottleneck width factor: a 1x1 conv to bottleneck*k channels before the 3x3 conv; "
        "`none` for plain DenseNet layers",
    )
    dropout: Rate = 0.0
    bias: bool = Field(default=False, description="whether the convolutions add a learned bias (FC-DenseNet)")
    concat_input: bool = Field(
        default=True,
        description="whether the block's output holds its input as well as the new feature maps; `false` for "
        "FC-DenseNet's bottleneck and upsampling blocks, whose new maps alone go on",
    )
    two_way: bool = Field(
        default=False,
        description="PeleeNet's two-way dense layer: a 1x1-3x3 branch and a 1x1-3x3-3x3 branch of growth/2 "
        "channels each, Conv-BN-activation; `bottleneck` is then PeleeNet's bottleneck width",
    )
    connect: Connectivity = Field(
        default_factory=Connectivity, description="which earlier feature maps each layer reads: " + CONNECTIVITY_HELP
    )
    layer: list[Composite] | None = Field(
        default=None,
        description="a user-defined layer H_l instead of the built-in one, e.g. `layer = bottleneck_se(growth)`; "
        "a layer with a parameter `growth` left unset gets each layer's width from the block",
    )
    fuse: Composite | None = Field(
        default=None,
        description="a user-defined layer applied to the block's output, e.g. VoVNet's 1x1 aggregation conv",
    )
    residual: bool = Field(
        default=False, description="add the block's input to its output (after `fuse`), as VoVNet-v2 and RDN do"
    )
    entry: Composite | None = Field(
        default=None,
        description="with `connect = dual(r)`: a layer of the block's input whose first r channels start the "
        "residual path and the rest the dense path (DPN's projection)",
    )


def two_way_width(growth: int, bottleneck: int, in_channels: int) -> int:
    """PeleeNet's 1x1 width in a two-way dense layer, as the authors' code has it:
    growth/2 times the bottleneck width, down to a multiple of 4, at most half the
    input. Standalone source copies it: short lines, no imports."""
    width = int(growth // 2 * bottleneck / 4) * 4
    if width > in_channels / 2:
        width = int(in_channels / 8) * 4
    return width


class Ref(BaseModel):
    """Feature maps kept with `keep NAME`: the `index`-th kept under that name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    index: int = Field(ge=0)


class Keep(Node):
    """`keep NAME`: remember the current feature maps (appended to the list NAME) for a later skip."""

    kind: Literal["keep"] = "keep"
    name: str


class TransitionDown(Node):
    """FC-DenseNet's transition down: BN-ReLU-Conv1x1 (all channels, bias)-Dropout-MaxPool 2."""

    kind: Literal["transition_down"] = "transition_down"
    dropout: Rate = 0.0


class TransitionUp(Node):
    """FC-DenseNet's transition up: a 3x3 stride-2 transposed convolution (bias) of the current feature
    maps, centre-cropped to the size of the kept maps `skip`, then concatenated with them."""

    kind: Literal["transition_up"] = "transition_up"
    skip: Ref = Field(description="feature maps kept with `keep`, e.g. `skips[-1]`")


class Transition(Node):
    """BN-ReLU-Conv1x1(floor(compression*C))-AvgPool2 (or a blur pool), between dense blocks."""

    kind: Literal["transition"] = "transition"
    keyword_only = ("blur", "conv_first", "pool")
    compression: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="the compression θ: the fraction of channels a transition keeps, 0 < θ <= 1 "
        "(0.5 in DenseNet-BC, 1 in plain DenseNet)",
    )
    dropout: Rate = 0.0
    blur: bool = Field(default=False, description="downsample with a blur pool (anti-aliased) instead of averaging")
    conv_first: bool = Field(default=False, description="Conv-BN-activation, as PeleeNet, rather than BN-ReLU-Conv")
    pool: bool = Field(default=True, description="whether it halves the resolution (PeleeNet's last does not)")


class Stem(Node):
    kind: Literal["stem"] = "stem"
    ops: list[StemOp]


class Head(Node):
    """The network's last classifier, after any operations or layers of the spec's own that lead to it."""

    kind: Literal["head"] = "head"
    ops: list[HeadPart]


class Exit(Node):
    """An early classifier (`exit ...`, written as a head): it reads the current feature maps (on a grid
    of scales, the coarsest) and leaves them as they are. A network with exits returns every exit's
    scores and the head's, stacked in order: anytime prediction (MSDNet) and deep supervision."""

    kind: Literal["exit"] = "exit"
    ops: list[HeadPart]


class Scales(Node):
    """MSDNet's first column (Huang et al. 2018): the current maps become the finest of a grid of
    scales, and each coarser scale is a stride-2 Conv3x3-BN-activation of the one before, with
    `channels * factors[s]` channels. Later `msdense` blocks grow every scale of the grid."""

    kind: Literal["scales"] = "scales"
    channels: PositiveInt = Field(
        le=MAX_CHANNELS, description="the base width: scale s has channels * factors[s] (the finest: the stem's)"
    )
    factors: list[PositiveInt] = Field(
        min_length=2, max_length=8, description="each scale's width factor, finest first, e.g. [1, 2, 4]"
    )


class MultiScaleDense(Node):
    """MSDNet's dense layers on the grid of scales: at each scale a layer concatenates its input, a
    Conv3x3 of the same scale's maps, and a stride-2 Conv3x3 of the next finer scale's (growth·factor/2
    channels each; the finest only the first, growth·factor), each conv after a 1x1 bottleneck of at
    most `bottlenecks[s]` times its width. As the network deepens the finest scales are dropped
    (the authors' `prune max`: evenly over all msdense layers), and where one is dropped a transition
    (Conv1x1-BN-activation at each scale) keeps `reduction` of the channels."""

    kind: Literal["msdense"] = "msdense"
    keyword_only = ("bottlenecks", "reduction")
    layers: PositiveInt = Field(
        le=MAX_LAYERS_PER_BLOCK, description=f"the number of layers in the block, 1 to {MAX_LAYERS_PER_BLOCK}"
    )
    growth: PositiveInt = Field(le=MAX_CHANNELS, description="the base growth rate: scale s grows growth * factors[s]")
    bottlenecks: list[PositiveInt] | None = Field(
        default=None,
        description="each scale's bottleneck width factor (the authors' bnFactor, e.g. [1, 2, 4]); `none`: no 1x1",
    )
    reduction: float = Field(
        default=0.5, ge=0.0, le=1.0, description="the compression of the transition where a scale is dropped; 0: none"
    )


Part = Annotated[
    Stem
    | DenseBlock
    | Transition
    | TransitionDown
    | TransitionUp
    | Keep
    | Composite
    | Scales
    | MultiScaleDense
    | Exit
    | Head,
    Field(discriminator="kind"),
]


class Input(Node):
    channels: PositiveInt = Field(le=MAX_CHANNELS, description="the input channels, > 0")
    size: tuple[Annotated[int, Field(gt=0, le=MAX_SIZE)], ...] = Field(
        min_length=1, max_length=MAX_SPATIAL_DIMS, description="one size per spatial dimension (1D, 2D or 3D)"
    )


class Network(Node):
    """A whole network, every parameter bound: what the compiler turns into a graph."""

    name: str
    file: str | None = Field(default=None, description="the file the network was defined in")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the parameters it was built with")
    input: Input
    parts: list[Part]
    memory: Lowering | None = Field(default=None, description="the lowering the spec asks for, if any")
    memory_span: SkipJsonSchema[Span | None] = Field(default=None, exclude=True, repr=False)
    normalization: Normalization = "batch"
    activation: Activation = "relu"
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _bundle: tuple[dict[str, str], str] = PrivateAttr(default_factory=lambda: ({}, ""))

    def bundle(self) -> tuple[dict[str, str], str]:
        """The texts of the spec and every file it uses, each under its path from the spec's folder, and
        the spec's: what `dsl.load_bundle` rebuilds the network from, with nothing read from disk."""
        return dict(self._bundle[0]), self._bundle[1]

    def locate(self, error: DnetError) -> DnetError:
        """Attach the text of the file an error points into, for errors found after parsing."""
        if error.source is None and error.span is not None:
            text = self._sources.get(error.span.file)
            if text is not None:
                error.source = text
        return error

    @property
    def blocks(self) -> list[DenseBlock]:
        return [p for p in self.parts if isinstance(p, DenseBlock)]

    @property
    def exits(self) -> list[Exit]:
        return [p for p in self.parts if isinstance(p, Exit)]


# The operations a call may name, by where it stands.
STEM_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m for m in (Conv, Norm, ReLU, Act, MaxPool, AvgPool, BlurPool, StemBlock, Dropout)
}
LAYER_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m
    for m in (
        Conv,
        DWConv,
        Norm,
        ReLU,
        Act,
        MaxPool,
        AvgPool,
        BlurPool,
        Dropout,
        Shuffle,
        SqueezeExcite,
        EffectiveSqueezeExcite,
        LearnedGroupConv,
        Select,
    )
}
JOINS = ("concat", "add")  # how parallel branches in a layer are joined
HEAD_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m for m in (Classifier, PixelClassifier, LinearClassifier)
}
# what a head or an exit may call: the operations before its classifier, and the classifiers
HEAD_PART_OPS: dict[str, type[Node]] = {
    **{m.model_fields["kind"].default: m for m in BEFORE_CLASSIFIER},
    **HEAD_OPS,
}
BODY_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m
    for m in (DenseBlock, Transition, TransitionDown, TransitionUp, Scales, MultiScaleDense)
}


SCHEMA_ID = "urn:dnetc:schema:network"


def schema() -> dict[str, Any]:
    """The JSON Schema of a validated network (draft 2020-12), from the models above: what
    `dnetc SPEC --json` reports under `spec`, and what `Network.model_validate` accepts."""
    body = Network.model_json_schema()
    body["title"] = "dnetc network"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **body}
