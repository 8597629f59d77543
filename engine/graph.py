"""Trace a CNN with ``torch.fx`` into a flat list of layers the engine understands.

Each traced node becomes a :class:`Layer` with a *kind* that says how an
occluding patch's changed region flows through it:

* ``SLIDING``: conv and pooling layers; the region grows by the kernel's reach
  and shrinks by the stride (see :mod:`krypton.engine.regions`).
* ``POINTWISE``: ReLU, eval BatchNorm, Dropout...; the region passes unchanged.
* ``MERGE``: residual adds and channel concatenations; the region is the union
  of the inputs' regions.
* ``ADAPTIVE_POOL``: adaptive average pooling; pointwise when it keeps the map
  size (VGG at 224 px), otherwise it needs the whole map.
* ``GLOBAL``: anything else (flatten, linear, unknown ops); it runs on whole
  maps. That is always exact, only slower, so unknown layers never break a
  model: they end the incremental part of the network.

The kinds are a property of the operator alone. Whether a layer really runs
incrementally also depends on tensor shapes, which the planner decides.
"""

from __future__ import annotations

import enum
import logging
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from krypton.engine.errors import UnsupportedModelError

__all__ = ["Layer", "LayerKind", "LayerPlan", "Sliding", "trace"]

logger = logging.getLogger(__name__)


class LayerKind(enum.Enum):
    INPUT = "input"
    SLIDING = "sliding"
    POINTWISE = "pointwise"
    MERGE = "merge"
    ADAPTIVE_POOL = "adaptive_pool"
    GLOBAL = "global"
    CONSTANT = "constant"
    OUTPUT = "output"


@dataclass(frozen=True)
class Sliding:
    """Geometry of a conv/pool layer and the same operator without padding.

    ``window_fn`` is applied to a read context that already holds the padding
    (filled with ``pad_value``: 0 for conv and average pooling, -inf for max
    pooling), so it must not pad again.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float
    window_fn: Callable[[Tensor], Tensor]
    conv_macs_per_cell: int = 0
    """Multiply-accumulates per output cell for convolutions (0 for pooling)."""


@dataclass(frozen=True)
class Layer:
    name: str
    kind: LayerKind
    inputs: tuple[str, ...]
    """Names of the layers whose values this layer reads, in ``call`` order."""
    call: Callable[..., Any]
    """The original operator: ``call(*values_of_inputs)``."""
    sliding: Sliding | None = None
    cat_dim: int | None = None
    adaptive_output: tuple[int, int] | None = None


@dataclass(frozen=True)
class LayerPlan:
    """A traced model: layers in execution order, one input, one output."""

    layers: tuple[Layer, ...]
    input: str
    output: str
    graph_module: fx.GraphModule
    """The traced model itself, in-place operators switched off: the forward walk runs it."""

    def forward_layers(self, image: Tensor) -> dict[str, Any]:
        """Run the model on ``image`` and keep every layer's output, by layer name."""
        interpreter = fx.Interpreter(self.graph_module, garbage_collect_values=False)
        interpreter.run(image)
        return {node.name: value for node, value in interpreter.env.items()}


_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)

_POINTWISE_FUNCTIONS: frozenset[Any] = frozenset(
    {
        F.relu,
        torch.relu,
        F.relu6,
        F.leaky_relu,
        F.elu,
        F.gelu,
        F.silu,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        torch.sigmoid,
        torch.tanh,
        F.dropout,
    }
)

_ELEMENTWISE_BINARY: frozenset[Any] = frozenset(
    {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
)

_CAT_FUNCTIONS: frozenset[Any] = frozenset({torch.cat, torch.concat})


def trace(model: nn.Module) -> LayerPlan:
    """Trace ``model`` (which must take one image batch) into a :class:`LayerPlan`.

    Raises:
        UnsupportedModelError: the model cannot be traced by ``torch.fx`` or
            does not have exactly one tensor input.
    """
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable control flow
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot be traced with torch.fx: {exc}"
        ) from exc

    _fold_batch_norms(graph_module)
    _switch_off_in_place(graph_module)
    layers: list[Layer] = []
    inputs: list[str] = []
    output: str | None = None
    for node in graph_module.graph.nodes:
        layer = _layer_for(node, graph_module)
        if layer.kind is LayerKind.INPUT:
            inputs.append(layer.name)
        elif layer.kind is LayerKind.OUTPUT:
            output = layer.name
        layers.append(layer)
        logger.debug("traced %s as %s", layer.name, layer.kind.value)
    if len(inputs) != 1 or output is None:
        raise UnsupportedModelError(
            f"the model must take exactly one image tensor; its forward takes {len(inputs)}"
        )
    return LayerPlan(layers=tuple(layers), input=inputs[0], output=output,
                     graph_module=graph_module)


def _fold_batch_norms(graph_module: fx.GraphModule) -> None:
    """Fold every eval BatchNorm that alone reads a convolution into that convolution.

    One operator instead of two on every window and map: about 3% of an
    approximate run on ResNet18 and InceptionV3 on a 2-core CPU (BENCHMARKS.md),
    and one kernel launch less per layer on a GPU, with heatmaps equal up to
    float rounding. The folded convolutions are new modules of the traced graph
    under new names, so the model itself is left as it was; the weights of the
    convolutions folded are read once, here.
    """
    modules = dict(graph_module.named_modules())
    calls = Counter(node.target for node in graph_module.graph.nodes
                    if node.op == "call_module")
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not _is_eval_batch_norm(modules[str(node.target)]):
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules[str(source.target)], nn.Conv2d)
                and len(source.users) == 1 and calls[source.target] == 1):
            continue
        name = f"{source.name}_folded"
        graph_module.add_submodule(name, fuse_conv_bn_eval(modules[str(source.target)],
                                                           modules[str(node.target)]))
        source.target = name
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
    graph_module.recompile()


def _switch_off_in_place(graph_module: fx.GraphModule) -> None:
    """Make every ``inplace=True`` call (``F.relu(x, inplace=True)``) out of place.

    The engine keeps every layer's original activation and must not see one
    overwritten by the next layer. Modules' own ``inplace`` flags are switched
    off by the engine's private copy of the model.
    """
    for node in graph_module.graph.nodes:
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
    graph_module.recompile()


def _layer_for(node: fx.Node, graph_module: fx.GraphModule) -> Layer:
    name = node.name
    input_nodes = tuple(node.all_input_nodes)
    input_names = tuple(n.name for n in input_nodes)

    if node.op == "placeholder":
        return Layer(name, LayerKind.INPUT, (), _identity)
    if node.op == "output":
        return Layer(name, LayerKind.OUTPUT, input_names, _bind(node, input_nodes, _identity))
    if node.op == "get_attr":
        value = _fetch_attr(graph_module, str(node.target))
        return Layer(name, LayerKind.CONSTANT, (), lambda: value)

    target = _resolve_target(node, graph_module)
    call = _bind(node, input_nodes, target)

    if node.op == "call_module":
        module = graph_module.get_submodule(str(node.target))
        sliding = _sliding_module(module)
        if sliding is not None:
            return Layer(name, LayerKind.SLIDING, input_names, call, sliding=sliding)
        if _is_pointwise_module(module):
            return Layer(name, LayerKind.POINTWISE, input_names, call)
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return Layer(
                name, LayerKind.ADAPTIVE_POOL, input_names, call,
                adaptive_output=_pair(module.output_size),
            )
        return Layer(name, LayerKind.GLOBAL, input_names, call)

    if node.op == "call_function":
        fn = node.target
        if fn in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d):
            sliding = _sliding_function(node)
            if sliding is not None:
                return Layer(name, LayerKind.SLIDING, input_names, call, sliding=sliding)
        if fn in _POINTWISE_FUNCTIONS and len(input_nodes) == 1:
            return Layer(name, LayerKind.POINTWISE, input_names, call)
        if fn in _ELEMENTWISE_BINARY:
            kind = LayerKind.MERGE if len(input_nodes) > 1 else LayerKind.POINTWISE
            return Layer(name, kind, input_names, call)
        if fn in _CAT_FUNCTIONS:
            dim = _bound_arguments(node, ("tensors", "dim"), {"dim": 0})["dim"]
            return Layer(name, LayerKind.MERGE, input_names, call, cat_dim=int(dim))
        if fn is F.adaptive_avg_pool2d:
            size = _bound_arguments(node, ("input", "output_size"), {})["output_size"]
            return Layer(
                name, LayerKind.ADAPTIVE_POOL, input_names, call, adaptive_output=_pair(size)
            )
    return Layer(name, LayerKind.GLOBAL, input_names, call)


def _identity(x: Any) -> Any:
    return x


def _fetch_attr(graph_module: fx.GraphModule, target: str) -> Any:
    value: Any = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _resolve_target(node: fx.Node, graph_module: fx.GraphModule) -> Callable[..., Any]:
    if node.op == "call_module":
        module: Callable[..., Any] = graph_module.get_submodule(str(node.target))
        return module
    if node.op == "call_method":
        method = str(node.target)
        return lambda obj, *args, **kwargs: getattr(obj, method)(*args, **kwargs)
    fn: Callable[..., Any] = node.target  # type: ignore[assignment]
    return fn


def _bind(
    node: fx.Node, input_nodes: Sequence[fx.Node], target: Callable[..., Any]
) -> Callable[..., Any]:
    """Turn a node into ``call(*input_values)``, the values given in ``input_nodes`` order."""
    kwargs = dict(node.kwargs)
    args = node.args
    positions = {n: i for i, n in enumerate(input_nodes)}

    def call(*values: Any) -> Any:
        def lookup(n: fx.Node) -> Any:
            return values[positions[n]]

        return target(*fx.node.map_arg(args, lookup), **fx.node.map_arg(kwargs, lookup))

    return call


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _is_pointwise_module(module: nn.Module) -> bool:
    return isinstance(module, _POINTWISE_MODULES) or _is_eval_batch_norm(module)


def _is_eval_batch_norm(module: nn.Module) -> bool:
    """Eval BatchNorm with running statistics: a per-channel affine map."""
    return (
        isinstance(module, nn.BatchNorm2d)
        and not module.training
        and module.track_running_stats
        and module.running_mean is not None
    )


def _conv_window_fn(conv: nn.Conv2d) -> Callable[[Tensor], Tensor]:
    def window_fn(x: Tensor) -> Tensor:
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return window_fn


def _sliding_module(module: nn.Module) -> Sliding | None:
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        kernel = _pair(module.kernel_size)
        macs = (module.in_channels // module.groups) * kernel[0] * kernel[1] * module.out_channels
        return Sliding(
            kernel=kernel,
            stride=_pair(module.stride),
            padding=_pair(module.padding),
            dilation=_pair(module.dilation),
            pad_value=0.0,
            window_fn=_conv_window_fn(module),
            conv_macs_per_cell=macs,
        )
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            return None
        return _max_pool(
            module.kernel_size, module.stride, module.padding, module.dilation
        )
    if isinstance(module, nn.AvgPool2d):
        return _avg_pool(
            module.kernel_size, module.stride, module.padding, module.ceil_mode,
            module.count_include_pad, module.divisor_override,
        )
    return None


_MAX_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                    "return_indices")
_AVG_POOL_PARAMS = ("input", "kernel_size", "stride", "padding", "ceil_mode",
                    "count_include_pad", "divisor_override")


def _sliding_function(node: fx.Node) -> Sliding | None:
    if node.target in (F.max_pool2d, torch.max_pool2d):
        a = _bound_arguments(node, _MAX_POOL_PARAMS, {
            "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
            "return_indices": False,
        })
        if a["return_indices"]:
            return None
        return _max_pool(a["kernel_size"], a["stride"], a["padding"], a["dilation"])
    a = _bound_arguments(node, _AVG_POOL_PARAMS, {
        "stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
        "divisor_override": None,
    })
    return _avg_pool(
        a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
        a["divisor_override"],
    )


def _bound_arguments(
    node: fx.Node, names: Sequence[str], defaults: dict[str, Any]
) -> dict[str, Any]:
    """Map a call's positional and keyword arguments to parameter names."""
    bound = dict(defaults)
    bound.update(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    missing = [n for n in names if n not in bound]
    if missing:
        raise UnsupportedModelError(f"cannot read argument(s) {missing} of {node.format_node()}")
    return bound


def _max_pool(kernel: Any, stride: Any, padding: Any, dilation: Any) -> Sliding:
    # ceil_mode needs nothing here: a last window reaching past the map reads
    # the -inf padding row, which max ignores, and the planner takes output
    # sizes from the real activations.
    k, s = _pair(kernel), _pair(stride if stride not in (None, []) else kernel)
    p, d = _pair(padding), _pair(dilation)

    def window_fn(x: Tensor) -> Tensor:
        return F.max_pool2d(x, k, s, 0, d)

    return Sliding(k, s, p, d, float("-inf"), window_fn)


def _avg_pool(
    kernel: Any, stride: Any, padding: Any, ceil_mode: bool, count_include_pad: bool,
    divisor_override: Any,
) -> Sliding | None:
    k, s = _pair(kernel), _pair(stride if stride not in (None, []) else kernel)
    p = _pair(padding)
    # Zero padding equals PyTorch's own only when padded cells count in the mean
    # and every window lies inside the padded map.
    if ceil_mode or divisor_override is not None or (p != (0, 0) and not count_include_pad):
        return None

    def window_fn(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, k, s, 0)

    return Sliding(k, s, p, (1, 1), 0.0, window_fn)
