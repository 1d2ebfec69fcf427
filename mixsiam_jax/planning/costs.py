"""What a compiled step tells without running it: memory, FLOPs, collectives, loops.

Reads a ``jax.stages.Compiled`` (``memory_analysis``, ``cost_analysis``, the
optimised HLO text) and returns plain dicts for the compile plan's JSON, plus
the text summary printed by ``python -m mixsiam_jax.planning``.
"""
import collections
import re
from typing import Any, Callable, Dict, List, Optional

import jax

from mixsiam_jax import device_crops

GIB = 2**30
# Bytes per element of HLO's primitive types.
_ELEMENT_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                  "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                  "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16, "token": 0}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all")
_COLLECTIVE_LINE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s+(?P<op>" + "|".join(COLLECTIVES) +
    r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_ELEMENT_BYTES, key=len, reverse=True)) +
                    r")\[([\d,]*)\]")
_WHILE = re.compile(r"\swhile\(")
_CONVOLUTION = re.compile(r"\sconvolution\(|custom_call_target=\"__cudnn\$conv")


def _arrays(shape: str) -> List[tuple]:
  """(dtype, bytes) of every array in an HLO shape string (one array or a tuple)."""
  out = []
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    out.append((dtype, int(count * _ELEMENT_BYTES[dtype])))
  return out


def collectives(hlo_text: str) -> List[Dict[str, Any]]:
  """Every cross-device collective in optimised HLO, grouped by kind and dtype.

  Asynchronous pairs count once (their '-start'). The bytes are those of the
  result per device: for all-gather and collective-permute starts, whose
  result tuple also holds the operand, the last array of the tuple.

  Args:
    hlo_text: ``compiled.as_text()``.

  Returns:
    [{'kind', 'dtype', 'count', 'bytes'}], largest first.
  """
  totals = collections.defaultdict(lambda: [0, 0])
  for line in hlo_text.splitlines():
    match = _COLLECTIVE_LINE.match(line)
    if not match or "-done(" in line:
      continue
    arrays = _arrays(match.group("shape"))
    if match.group("start") and match.group("op") in ("all-gather", "collective-permute"):
      arrays = [a for a in arrays if a[0] not in ("u32", "s32")][-1:] or arrays[-1:]
    for dtype in sorted({a[0] for a in arrays}):
      key = (match.group("op"), dtype)
      totals[key][0] += 1
      totals[key][1] += sum(b for d, b in arrays if d == dtype)
  rows = [{"kind": k, "dtype": d, "count": c, "bytes": b} for (k, d), (c, b) in totals.items()]
  return sorted(rows, key=lambda r: -r["bytes"])


def memory(compiled: Any, usable_bytes: Optional[int]) -> Dict[str, Any]:
  """Per-device memory of a compiled step against what the device offers.

  Args:
    compiled: a jax.stages.Compiled.
    usable_bytes: memory per device a program may use (None: unknown).

  Returns:
    {'arguments', 'outputs', 'aliased', 'temporaries', 'code', 'total'} in
    bytes (total = arguments + outputs - aliased + temporaries + code: what
    is live at the peak when donated inputs are reused for outputs), and
    'usable', 'fits'.
  """
  stats = compiled.memory_analysis()
  out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
         "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
         "code": stats.generated_code_size_in_bytes}
  peak = getattr(stats, "peak_memory_in_bytes", 0)
  out["total"] = max(peak, out["arguments"] + out["outputs"] - out["aliased"]
                     + out["temporaries"] + out["code"])
  out["usable"] = usable_bytes
  out["fits"] = None if usable_bytes is None else out["total"] <= usable_bytes
  return out


def flops(compiled: Any, step_function: Callable, args: Any, num_devices: int, platform: str
          ) -> Dict[str, Any]:
  """FLOPs of one step per device, from XLA's cost analysis.

  TPU and CPU: the compiled module's analysis (per device, after partitioning).
  GPU: the step's function lowered, unpartitioned, for this host's CPU (lowering
  only, no compile), divided by the number of devices. XLA:GPU's own analysis
  leaves out the convolutions and matrix products it hands to cuDNN and cuBLAS
  (on an H200 with jax 0.11.2 it counted 1.9 GFLOP per ResNet-50 image of about
  72), and a deviceless GPU compile has none at all. Loops count once in either,
  so a CPU step's per-tap convolution loops are undercounted.

  Args:
    compiled: the compiled step.
    step_function: the step unjitted and outside any mesh context (lowered for the CPU).
    args: the abstract arguments it was compiled for.
    num_devices: devices of the mesh.
    platform: the devices' platform ('tpu', 'gpu' or 'cpu').

  Returns:
    {'per_device': float or None, 'source': str}.
  """
  if platform != "gpu":
    cost = compiled.cost_analysis()
    if cost and cost.get("flops", 0) > 0:
      return {"per_device": float(cost["flops"]), "source": "compiled module"}
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  except RuntimeError:  # no CPU backend in this process (JAX_PLATFORMS without cpu)
    return {"per_device": None, "source": "not available"}
  host_args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
  cost = jax.jit(step_function).lower(*host_args).cost_analysis()
  if cost and cost.get("flops", 0) > 0:
    return {"per_device": float(cost["flops"]) / num_devices,
            "source": "unpartitioned HLO (CPU lowering) / devices"}
  return {"per_device": None, "source": "not available"}


def device_crops_cost(batch_size: int, image_size: int, canvas_size: int) -> Dict[str, float]:
  """FLOPs and bytes accessed of the step's crop, resize and flip (device_crops.py), per device.

  XLA's cost analysis of the function alone, compiled for this host's CPU (a GPU's
  analysis leaves out the products it hands to cuBLAS); the bytes are those of the
  CPU's fused program, the FLOPs those of the two products per view.

  Args:
    batch_size: examples per device (two views each).
    image_size: side of the views.
    canvas_size: side of the canvases.

  Returns:
    {'flops', 'bytes_accessed'} per device per step.
  """
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  args = [jax.ShapeDtypeStruct(shape, dtype, sharding=cpu) for shape, dtype in (
      ((batch_size, canvas_size, canvas_size, 3), jax.numpy.uint8),
      ((batch_size, 2, 4), jax.numpy.float32), ((batch_size, 2), jax.numpy.bool_))]
  cost = jax.jit(device_crops.crop_resize_flip, static_argnums=3).lower(
      *args, image_size).compile().cost_analysis()
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def program_shape(hlo_text: str) -> Dict[str, int]:
  """Counts of while loops and convolutions in optimised HLO (XLA's or cuDNN's)."""
  return {"while_loops": len(_WHILE.findall(hlo_text)),
          "convolutions": len(_CONVOLUTION.findall(hlo_text))}


def _gib(value: Optional[float]) -> str:
  if value is None:
    return "?"
  return f"{value / GIB:.2f} GiB" if value >= GIB / 4 else f"{value / 2**20:.1f} MiB"


def _count(value: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if value >= scale:
      return f"{value / scale:.3g} {unit}"
  return f"{value:.3g}"


def summary(plan: Dict[str, Any]) -> str:
  """The plan as a few lines of text (the JSON holds everything)."""
  lines = [f"{plan['topology']}: {plan['num_devices']} x {plan['device_kind']} "
           f"({plan['num_processes']} processes); global batch {plan['batch_size']} = "
           f"{plan['per_device_batch']} per device; {plan['dtype']}, conv {plan['conv_impl']}, "
           f"remat {plan['remat']}; {plan['num_params']:,} parameters."]
  if "error" in plan:  # the compiler's RESOURCE_EXHAUSTED
    lines.append(f"DOES NOT FIT: {plan['error']}")
    return "\n".join(lines)
  mem = plan["memory"]
  verdict = {True: "FITS", False: "DOES NOT FIT", None: "memory limit unknown"}[mem["fits"]]
  lines.append(f"{verdict}: {_gib(mem['total'])} per device of {_gib(mem['usable'])} usable "
               f"(arguments {_gib(mem['arguments'])}, temporaries {_gib(mem['temporaries'])}, "
               f"outputs {_gib(mem['outputs'])}, aliased {_gib(mem['aliased'])}).")
  cost = plan["flops"]
  if cost["per_device"]:
    lines.append(f"FLOPs: {_count(cost['per_device'])} per device per step, "
                 f"{_count(cost['per_image'])} per image ({cost['source']}).")
  crops = plan.get("device_crops")
  if crops:
    lines.append(f"of which crop + resize + flip on the device: {_count(crops['flops'])} FLOPs, "
                 f"{_gib(crops['bytes_accessed'])} accessed per device per step.")
  est = plan.get("step_time_estimate")
  if est:
    lines.append(f"Step time ESTIMATE (not measured): {est['seconds'] * 1e3:.3g} ms at "
                 f"{est['utilization']:.0%} of {est['peak_flops'] / 1e12:.0f} TFLOP/s peak = "
                 f"{est['images_per_second']:,.0f} images/s.")
  for row in plan["collectives"] or [{"kind": "none", "dtype": "-", "count": 0, "bytes": 0}]:
    lines.append(f"collective {row['kind']} {row['dtype']}: {row['count']} ops, "
                 f"{row['bytes'] / 2**20:.1f} MiB per device per step.")
  lines.append(f"HLO: {plan['program']['while_loops']} while loops, "
               f"{plan['program']['convolutions']} convolutions; compiled in "
               f"{plan['compile_seconds']:.0f} s.")
  return "\n".join(lines)
