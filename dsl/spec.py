"""The validated spec: pydantic models of a network, as the evaluator produces it.

The models double as the signatures of the language's operations: a call's positional
arguments fill the fields in the order written here, keywords name them, and each field's
description is the help a user sees when a value is wrong.
"""

from __future__ import annotations

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
ACTIVATIONS = ("relu", "prelu", "silu", "gelu")
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
    Literal["relu", "prelu", "silu", "gelu"],
    Field(description="every activation of the network (prelu: one learned slope)"),
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
    channels: PositiveInt = Field(description="the number of output channels, > 0")
    stride: Size = Field(default=1, description="the stride, > 0")
    padding: NonNegativeSize | None = Field(default=None, description="zero padding; by default kernel // 2")
    bias: bool = Field(default=False, description="whether the convolution adds a learned bias per channel")


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

    kernel: Size = Field(description="the window size, > 0")
    stride: Size | None = Field(default=None, description="the stride; by default the window size")
    padding: NonNegativeSize = Field(default=0, description="padding, at most half the window")


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


class Classifier(Node):
    """The paper's head: BN-ReLU-global average pool-Linear (with bias)."""

    kind: Literal["classifier"] = "classifier"
    classes: PositiveInt = Field(description="the number of classes, > 0")


StemOp = Annotated[
    Conv | Norm | ReLU | Act | MaxPool | AvgPool | BlurPool | StemBlock | Dropout, Field(discriminator="kind")
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

# ---- the parts of a network ----------------------------------------------------------------


class DenseBlock(Node):
    """Layers each fed the concatenation of all earlier feature maps, each adding `growth` channels."""

    kind: Literal["dense"] = "dense"
    keyword_only = ("bias", "concat_input", "two_way")
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
    kind: Literal["head"] = "head"
    ops: list[HeadOp]


Part = Annotated[
    Stem | DenseBlock | Transition | TransitionDown | TransitionUp | Keep | Head, Field(discriminator="kind")
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


# The operations a call may name, by where it stands.
STEM_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m for m in (Conv, Norm, ReLU, Act, MaxPool, AvgPool, BlurPool, StemBlock, Dropout)
}
HEAD_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m for m in (Classifier, PixelClassifier, LinearClassifier)
}
BODY_OPS: dict[str, type[Node]] = {
    m.model_fields["kind"].default: m for m in (DenseBlock, Transition, TransitionDown, TransitionUp)
}


SCHEMA_ID = "urn:dnetc:schema:network"


def schema() -> dict[str, Any]:
    """The JSON Schema of a validated network (draft 2020-12), from the models above: what
    `dnetc SPEC --json` reports under `spec`, and what `Network.model_validate` accepts."""
    body = Network.model_json_schema()
    body["title"] = "dnetc network"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **body}
