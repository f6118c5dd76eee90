"""Whole-model latency: bitwise conversions against fp32, as users run them: ``lsqbq bench models``.

Usage::

    lsqbq bench models [--quick | --smoke] [--out results/bench] [--checkpoints checkpoints/fashion-mnist] [--seeds 0]
                       [--float-parts fp32,int8]

Two groups, every ratio timed side by side in one process (median of >= 7 repeats after warm-up; the minimum and
the load average are recorded too):

* ``network``     ResNet-18 from :func:`lsqbq.models.build` at ImageNet (224x224, ImageNet stem) and CIFAR (32x32,
                  CIFAR stem) shape, batch 1, 1 and 2 threads: the fp32 model in eager NCHW and channels_last
                  (the teacher's regular blocks, and the students' xnor topology with fp32 convs), the simulated
                  quantized model (eager), and its :func:`~lsqbq.kernels.to_bitwise` conversion (fused), for the
                  1-bit and 2x1 kernels (fp32 stem, shortcuts and classifier); the 1-bit conversion also frozen
                  (:func:`~lsqbq.kernels.freeze`, rows ``bitwise frozen``: one traced graph per thread count), with
                  each kind of float parts timed.
* ``checkpoint``  every quantized default-profile checkpoint found under ``--checkpoints``
                  (``<model>/<x>_<w>/s<seed>/checkpoint.pt``, both schemes quantized): the simulated eager model, its
                  fp32 teacher (``fp_fp`` of the same model and seed) and its bitwise conversion, at batch 1 and
                  256, 1 and 2 threads, with the scale mode the conversion uses (``auto``: as the model evaluates),
                  plus ``bitwise stored``: the conversion with the moving-average scales recorded in training
                  (the paper's inference mode), when the checkpoint has them.

Where the bitwise model is not faster than its teacher, ``models_profile_<name>.txt`` (next to the tables) holds a
``torch.profiler`` table of one bitwise call. Outputs: ``models.csv`` (machine, commit, ISA path and load on every
row), ``models.md``, ``models_headline.md``, all recorded in one MLflow run of experiment ``lsqbq-bench-models``
(:mod:`lsqbq.bench.harness`) whose tag ``lsqbq.source_run_ids`` names the training runs of the checkpoints timed.
``--smoke``: ResNet-18 at 8x8 and batch 1 only, one repeat (a check, not a measurement). ``--float-parts
fp32,int8`` also times the conversions with int8 full-precision parts (``to_bitwise(float_parts="int8")``: rows
``bitwise ... int8``, column ``float_parts``; headline rows of their own).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..errors import CheckpointNotFoundError
from ..kernels import freeze, to_bitwise
from ..kernels.chunks import SERIAL_PASS_BYTES
from ..schemes import get_scheme, kernel_name
from .harness import BenchRun, headline_cells, int_list, parser, provenance_line, thread_counts, write_text
from .timing import load, time_threads

NETWORK_PAIRS = (("ls-1", "ls-1"), ("gf-2", "ls-1"))
SHAPES = {"imagenet": dict(stem="imagenet", num_classes=1000, size=224),
          "cifar": dict(stem="cifar", num_classes=10, size=32)}
SMOKE_SHAPES = {"smoke": dict(stem="cifar", num_classes=10, size=8)}  # --smoke: a check, not a measurement
DEFAULT_CHECKPOINTS = Path("checkpoints/fashion-mnist")
# The engine's targets on the reference machine, per kernel back end of the run: the binary ResNet-18 (ImageNet
# shape, 1-bit) against fp32 eager channels_last at batch 1, 1 thread (AVX2: with oneDNN capped at AVX2), and every
# checkpoint bitwise at least as fast as its fp32 teacher at batch 256 (AVX-512 only).
TARGETS = {"avx512": {"resnet18": 7.0, "batch 256": 1.0}, "avx2": {"resnet18": 3.0}}


def resnet18_network(shape: dict, x_quant: str = "fp", w_quant: str = "fp", block: str | None = None) -> nn.Module:
    """ResNet-18 of :func:`lsqbq.models.build` at one of :data:`SHAPES` (its ``stem`` and ``num_classes``), random
    initialisation, eval mode: the fp32 teacher (``block="regular"``), the students' topology with fp32 convs
    (``block="xnor"``) or a quantized student (``x_quant`` / ``w_quant``; fp32 stem, shortcuts and classifier)."""
    from ..models import build

    return build("resnet18", stem=shape["stem"], num_classes=shape["num_classes"], x_quant=x_quant,
                 w_quant=w_quant, block=block).eval()


def bench_networks(threads_list: list[int], backend: str, repeats: int, shapes: dict[str, dict],
                   out: Path | None = None, min_time: float = 0.2, float_parts: tuple[str, ...] = ("fp32",)
                   ) -> list[dict]:
    """ResNet-18 at each of ``shapes`` (:data:`SHAPES`: ImageNet / CIFAR), batch 1: fp32 eager models against the
    bitwise conversions; with ``out``, a profile of the 1-bit network per shape
    (``models_profile_resnet18_<shape>_<kernel>.txt``)."""
    rows = []
    for shape, opt in shapes.items():
        torch.manual_seed(0)
        x = torch.randn(1, 3, opt["size"], opt["size"])
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cands = {}
        teacher = resnet18_network(opt)  # regular blocks, as the fp teachers are trained
        same = resnet18_network(opt, block="xnor")  # the students' topology with fp32 convs
        for name, net in (("fp32 teacher", teacher), ("fp32 xnor-topology", same)):
            net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
            cands[f"{name} NCHW"] = (lambda net=net: net(x), dict(scheme="fp32", model=name, layout="NCHW"))
            cands[f"{name} channels_last"] = (lambda net=net_cl: net(x_cl),
                                              dict(scheme="fp32", model=name, layout="channels_last"))
        for xq, wq in NETWORK_PAIRS:
            label = kernel_name(xq, wq)
            sim = resnet18_network(opt, xq, wq)
            for fp in float_parts:
                fast = to_bitwise(sim, backend=backend, float_parts=fp)
                cands[f"bitwise {label}" + _fp_suffix(fp)] = (
                    lambda fast=fast: fast(x_cl),
                    dict(scheme=label, model="bitwise", layout="NHWC", scale_mode="fitted", float_parts=fp))
                if xq == NETWORK_PAIRS[0][0]:  # as traced graphs (lsqbq.kernels.freeze)
                    frozen = freeze(to_bitwise(sim, backend=backend, float_parts=fp))
                    cands[f"bitwise frozen {label}" + _fp_suffix(fp)] = (
                        lambda frozen=frozen: frozen(x_cl),
                        dict(scheme=label, model="bitwise frozen", layout="NHWC", scale_mode="fitted",
                             float_parts=fp))
            if xq == NETWORK_PAIRS[0][0]:
                cands[f"simulated {label}"] = (lambda sim=sim: sim(x), dict(scheme=label, model="simulated",
                                                                            layout="NCHW", scale_mode="fitted"))
        timed, l0, l1 = time_threads({n: fn for n, (fn, _) in cands.items()}, threads_list, repeats, min_time)
        for (name, t), (med, mn) in timed.items():
            rows.append({"kind": "network", "network": f"resnet18 {shape} {opt['size']}x{opt['size']}", "impl": name,
                         "batch": 1, "threads": t, "seconds": med, "seconds_min": mn, "load_start": l0,
                         "load_end": l1, **cands[name][1]})
        if out is not None:  # where the 1-bit network's time goes (the target is on the ImageNet shape)
            label = kernel_name(*NETWORK_PAIRS[0])
            fast = cands[f"bitwise {label}"][0]
            torch.set_num_threads(threads_list[0])
            fp = timed[("fp32 xnor-topology channels_last", threads_list[0])][0]
            b = timed[(f"bitwise {label}", threads_list[0])][0]
            profile_table(fast, out / f"models_profile_resnet18_{shape}_{label}.txt",
                          f"bitwise resnet18 {shape} {label}, batch 1, {threads_list[0]} thread(s): {1e3 * b:.3f} ms "
                          f"vs fp32 channels_last {1e3 * fp:.3f} ms ({fp / b:.2f}x)")
            if "int8" in float_parts:
                name = f"bitwise {label}" + _fp_suffix("int8")
                b8 = timed[(name, threads_list[0])][0]
                profile_table(cands[name][0], out / f"models_profile_resnet18_{shape}_{label}_int8.txt",
                              f"bitwise resnet18 {shape} {label}, int8 float parts, batch 1, {threads_list[0]} "
                              f"thread(s): {1e3 * b8:.3f} ms vs fp32 channels_last {1e3 * fp:.3f} ms ({fp / b8:.2f}x)")
        print(f"  resnet18 {shape} done (load {load():.1f})", flush=True)
    return rows


def _fp_suffix(float_parts: str) -> str:
    """Row-name suffix of a conversion with ``float_parts`` (none for the paper's fp32)."""
    return "" if float_parts == "fp32" else f" {float_parts}"


def find_checkpoints(root: Path, seeds: list[int]) -> list[tuple[str, str, str, int, Path]]:
    """``(model, x_quant, w_quant, seed, path)`` of the quantized students under ``root`` (both schemes non-fp)."""
    found = []
    for path in sorted(root.glob("*/*_*/s*/checkpoint.pt")):
        model, pair, seed = path.parts[-4], path.parts[-3], path.parts[-2]
        xq, _, wq = pair.partition("_")
        try:
            xs, ws = get_scheme(xq), get_scheme(wq)
        except ValueError:
            continue
        s = int(seed[1:]) if seed[1:].isdigit() else -1
        if not xs.is_fp and not ws.is_fp and s in seeds:
            found.append((model, xs.name, ws.name, s, path))
    return found


def checkpoint_input_shape(model: nn.Module, state: dict) -> tuple[int, ...]:
    """``(C, H, W)`` of one input image of a checkpoint's model: its config's ``data.image_size`` (28 when absent)
    and its builder's ``in_chans`` (1 when absent)."""
    cfg = state.get("config", {})
    size = int(cfg.get("data", {}).get("image_size") or 28) if isinstance(cfg, dict) else 28
    chans = int(state.get("model_options", {}).get("in_chans", 1))
    return (chans, size, size)


def profile_table(fn, path: Path, title: str) -> None:
    """A ``torch.profiler`` table (self CPU time per op) of one call of ``fn``, written to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            for _ in range(5):
                fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    write_text(path, f"{title}\n(5 calls; self CPU time per op)\n\n{table}\n")


def bench_checkpoints(root: Path, seeds: list[int], threads_list: list[int], batches: list[int], backend: str,
                      repeats: int, out: Path, min_time: float | None = None,
                      float_parts: tuple[str, ...] = ("fp32",)) -> list[dict]:
    """Each quantized checkpoint: simulated eager model, fp32 teacher of the same seed, bitwise conversion."""
    from .. import checkpoint as ckpt_io

    rows = []
    for model_name, xq, wq, seed, path in find_checkpoints(root, seeds):
        teacher_path = root / model_name / "fp_fp" / f"s{seed}" / "checkpoint.pt"
        loaded = ckpt_io.load_model(path)
        sim = loaded.model.eval()
        fast = to_bitwise(sim, backend=backend)
        modes = {m.scale_mode for m in fast.modules() if hasattr(m, "scale_mode")}
        mode = modes.pop() if len(modes) == 1 else "mixed"
        stored = None  # the same checkpoint with the moving averages of training (no per-image fit)
        if mode == "fitted" and all(int(m.x_ema_updates) > 0 for m in sim.modules() if hasattr(m, "x_ema_updates")
                                    and not m.x_scheme.is_fp):
            stored = to_bitwise(sim, scales="stored", backend=backend)
        others = {fp: to_bitwise(sim, backend=backend, float_parts=fp) for fp in float_parts if fp != "fp32"}
        teacher = ckpt_io.load_model(teacher_path).model.eval() if teacher_path.exists() else None
        shape = checkpoint_input_shape(sim, loaded.state)
        label = kernel_name(xq, wq)
        name = f"{model_name} {xq}/{wq} s{seed}"
        for batch in batches:
            x = torch.randn(batch, *shape)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            cands = {"simulated": lambda: sim(x), "bitwise": lambda: fast(x),
                     "bitwise channels_last": lambda: fast(x_cl)}
            for fp, other in others.items():
                cands[f"bitwise channels_last{_fp_suffix(fp)}"] = lambda m=other: m(x_cl)
            if stored is not None:
                cands["bitwise stored"] = lambda: stored(x)
                cands["bitwise stored channels_last"] = lambda: stored(x_cl)
            if teacher is not None:
                cands["fp32 teacher"] = lambda: teacher(x)
                teacher_cl = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
                cands["fp32 teacher channels_last"] = lambda t=teacher_cl: t(x_cl)
            least = (0.05 if batch == 1 else 0.1) if min_time is None else min_time
            timed, l0, l1 = time_threads(cands, threads_list, repeats, least)
            for (impl, t), (med, mn) in timed.items():
                rows.append({"kind": "checkpoint", "network": name, "model": model_name, "x_quant": xq,
                             "w_quant": wq, "seed": seed, "scheme": label, "impl": impl, "batch": batch, "threads": t,
                             "seconds": med, "seconds_min": mn,
                             "scale_mode": _mode_of(impl, mode), "float_parts": _float_parts_of(impl),
                             "load_start": l0, "load_end": l1, "checkpoint": str(path)})
            # profile the bitwise call where it does not beat the teacher (1 thread)
            t1 = {impl: timed[(impl, threads_list[0])][0] for impl in cands}
            best_fp = min((v for k, v in t1.items() if k.startswith("fp32")), default=float("inf"))
            best_bit = min(("bitwise", "bitwise channels_last"), key=t1.get)  # the mode the model trained with
            if t1[best_bit] > best_fp:
                torch.set_num_threads(threads_list[0])
                xin = x_cl if best_bit.endswith("channels_last") else x
                fname = f"models_profile_{model_name}_{xq}_{wq}_s{seed}_b{batch}.txt"
                profile_table(lambda: fast(xin), out / fname,
                              f"{best_bit} {name}, batch {batch}, {threads_list[0]} thread(s): "
                              f"{1e3 * t1[best_bit]:.3f} ms vs fp32 teacher {1e3 * best_fp:.3f} ms")
        print(f"  {name} done (load {load():.1f})", flush=True)
    return rows


def _float_parts_of(impl: str) -> str:
    """``int8`` for the rows of int8 float parts, ``fp32`` for the other bitwise rows, empty for eager ones."""
    if not impl.startswith("bitwise"):
        return ""
    return "int8" if impl.endswith(" int8") else "fp32"


def _mode_of(impl: str, trained: str) -> str:
    """Activation-scale mode of a timed implementation: ``stored`` rows use the moving averages, the other bitwise
    rows the mode the model evaluates with, eager rows none."""
    if not impl.startswith("bitwise"):
        return ""
    return "stored" if impl.startswith("bitwise stored") else trained


# ---------------------------------------------------------------------------------------------- reports


def summarise(df: pd.DataFrame) -> dict[str, float]:
    out = {}
    if "float_parts" not in df:  # tables written before the int8 option: every bitwise row is fp32
        df = df.assign(float_parts=df.impl.map(_float_parts_of))
    int8 = df.float_parts.fillna("").eq("int8")
    net = df[(df.kind == "network") & (df.threads == 1)]
    for network, g in net.groupby("network"):
        fp_cl = g[(g.model == "fp32 xnor-topology") & (g.layout == "channels_last")].seconds.min()
        for label in g[g.model == "bitwise"].scheme.unique():
            for model, how in (("bitwise", ""), ("bitwise frozen", " frozen")):
                for fp, suffix in (("fp32", ""), ("int8", " (int8 float parts)")):
                    rows = g[(g.model == model) & (g.scheme == label) & int8.loc[g.index].eq(fp == "int8")]
                    if len(rows):
                        out[f"{network} {label}{how}{suffix} vs fp32 channels_last"] = fp_cl / rows.seconds.min()
    df = df[~int8]
    ck = df[(df.kind == "checkpoint") & (df.threads == 1)]
    for (network, batch), g in ck.groupby(["network", "batch"]):
        fp = g[g.impl.str.startswith("fp32")].seconds.min()  # each side with its faster input layout
        bit = g[g.impl.str.startswith("bitwise")]
        for mode, rows in bit.groupby("scale_mode", sort=False):
            if fp == fp:
                out[f"{network} batch {batch}: bitwise ({mode} scales) vs fp32 teacher"] = fp / rows.seconds.min()
    return out


def headline_markdown(summary: dict[str, float], backend: str) -> str:
    """The headline ratios with the targets of the run's kernel back end (:data:`TARGETS`), as a markdown table."""
    targets = TARGETS.get(backend, {})
    rows = []
    for key, value in summary.items():
        target = None
        if "resnet18 imagenet" in key and any(kernel_name("ls-1", "ls-1") + how + " vs" in key
                                              for how in ("", " frozen")):
            target = targets.get("resnet18")
        elif "batch 256" in key:
            target = targets.get("batch 256")
        rows.append({"metric": key, **headline_cells(value, target)})
    return pd.DataFrame(rows).to_markdown(index=False) + "\n"


def to_markdown(df: pd.DataFrame, info: dict, summary: dict[str, float], profiles: list[str]) -> str:
    loads = pd.concat([df.load_start, df.load_end])
    parts = [
        "# Whole-model latency (bitwise vs fp32)\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; torch {info['torch']}; kernels: "
        f"`{info['kernels']}`. Median of repeats after warm-up (CSV: minimum too), all rows of a group timed side by "
        f"side. Load average (1 min) during the run: {loads.min():.1f} to {loads.max():.1f} on {info['cores']} "
        "cores. Bitwise models: `to_bitwise` with fusion (BatchNorm / activation / residual in the binary ops), "
        "fed the same tensor as the eager models; scale mode as listed (`fitted`: per-sample scales at run time, "
        "as the default-profile students evaluate; `stored`, the rows `bitwise stored`: the moving averages recorded "
        "in training, no per-image fit). `bitwise frozen`: the same conversion through `lsqbq.kernels.freeze` "
        "(one traced graph per input signature and thread count, without the modules' Python; inputs under "
        f"{SERIAL_PASS_BYTES >> 10} KiB run on one thread, as in the model; on 2 threads, a network whose tracing set "
        "a thread count of its own for some op runs the model itself).",
        *filter(None, [provenance_line(df)]),
        "## Headline (1 thread)", headline_markdown(summary, str(info["kernels"])).rstrip("\n")]
    for kind, title in (("network", "ResNet-18 from models.build, batch 1"),
                        ("checkpoint", "Default-profile checkpoints")):
        g = df[df.kind == kind]
        if not len(g):
            continue
        keys = ["network", "batch", "threads"]
        rows = []
        for key, grp in g.groupby(keys, sort=False):
            base = grp[grp.impl.str.startswith("fp32")].seconds.min()
            row = dict(zip(keys, key))
            for r in grp.itertuples():
                row[r.impl] = f"{1e3 * r.seconds:.3f}" + (f" ({base / r.seconds:.1f}x)" if base == base else "")
            if kind == "checkpoint":
                row["scale mode"] = " / ".join(dict.fromkeys(grp[grp.impl.str.startswith("bitwise")].scale_mode))
            rows.append(row)
        parts += [f"## {title}: milliseconds (speed-up vs the faster fp32 row)",
                  pd.DataFrame(rows).to_markdown(index=False)]
    if profiles:
        parts += ["## torch.profiler tables: the 1-bit ResNet-18s, and checkpoints whose bitwise model is not faster "
                  "than its teacher",
                  "\n".join(f"- `{p}`" for p in profiles)]
    return "\n\n".join(parts) + "\n"


def render(out: Path, df: pd.DataFrame | None = None) -> str:
    """Write ``models.md`` and ``models_headline.md`` into ``out`` atomically from ``models.csv`` (or ``df``);
    returns the markdown."""
    df = pd.read_csv(out / "models.csv") if df is None else df
    info = {k: df.iloc[0][k] for k in ("cpu", "cores", "flags", "torch", "kernels")}
    summary = summarise(df)
    profiles = sorted(p.name for p in out.glob("models_profile_*.txt"))
    md = to_markdown(df, info, summary, profiles)
    write_text(out / "models.md", md)
    write_text(out / "models_headline.md", headline_markdown(summary, str(info["kernels"])))
    return md


def _float_parts_list(text: str) -> tuple[str, ...]:
    import argparse

    from ..kernels.float_parts import FLOAT_PARTS

    values = tuple(dict.fromkeys(v.strip() for v in text.split(",")))
    bad = [v for v in values if v not in FLOAT_PARTS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"--float-parts takes {', '.join(FLOAT_PARTS)} (comma-separated), "
                                         f"got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = parser("models", __doc__, quick="ImageNet ResNet-18 and batch 1 only, 1 thread", backend=True,
               render_only="models.md and models_headline.md")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="root of <model>/<x>_<w>/s<seed>/checkpoint.pt (default checkpoints/fashion-mnist, not "
                        "with --smoke; skipped when absent)")
    p.add_argument("--seeds", type=int_list(0), default="0",
                   help="checkpoint seeds to time, e.g. 0,1,2 (latency does not depend on the seed)")
    p.add_argument("--batches", type=int_list(1), default="1,256", help="checkpoint batch sizes")
    p.add_argument("--no-networks", action="store_true", help="checkpoints only")
    p.add_argument("--float-parts", type=_float_parts_list, default="fp32",
                   help="full-precision parts of the conversions to time: fp32 (the paper's), int8, or fp32,int8")
    args = p.parse_args(argv)
    if args.render_only:
        print(render(args.out))
        return 0
    if args.checkpoints is None and not args.smoke:
        args.checkpoints = DEFAULT_CHECKPOINTS
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    seeds, seeds_text = args.seeds, ",".join(map(str, args.seeds))
    if args.no_networks and not (args.checkpoints and args.checkpoints.is_dir()
                                 and find_checkpoints(args.checkpoints, seeds)):
        raise CheckpointNotFoundError(
            f"nothing to time: --no-networks, and no quantized checkpoint of seed(s) {seeds_text} under "
            f"{args.checkpoints or 'no --checkpoints (--smoke times none by default)'} "
            "(<model>/<x>_<w>/s<seed>/checkpoint.pt; `dvc pull` fetches the published ones)")
    repeats = 1 if args.smoke else max(7, args.repeats)
    single = args.quick or args.smoke
    shapes = SMOKE_SHAPES if args.smoke else {"imagenet": SHAPES["imagenet"]} if args.quick else SHAPES
    min_time = 0.0 if args.smoke else None
    with BenchRun("models", args.out, backend=args.backend, options=vars(args)) as run:
        threads_list = thread_counts(args.threads, single)
        for old in args.out.glob("models_profile_*.txt"):
            old.unlink()
        rows: list[dict] = []
        if not args.no_networks:
            rows += bench_networks(threads_list, run.backend, repeats, shapes, None if args.smoke else args.out,
                                   0.2 if min_time is None else min_time, args.float_parts)
        if args.checkpoints is not None and args.checkpoints.exists():
            rows += bench_checkpoints(args.checkpoints, seeds, threads_list, [1] if single else args.batches,
                                      run.backend, repeats, args.out, min_time, args.float_parts)
        elif args.checkpoints is not None:
            print(f"  no checkpoints under {args.checkpoints}: skipped (dvc pull fetches them)", flush=True)
        df = run.table(pd.DataFrame(rows).assign(ms=lambda d: 1e3 * d.seconds))
        run.write_csv("models.csv", df, float_format="%.6g")
        md = render(args.out, df)
        for name in ("models.md", "models_headline.md", *sorted(f.name for f in args.out.glob("models_profile_*"))):
            run.keep(run.path(name))
        from ..tracking import checkpoint_run_id

        checkpoints = sorted(set(df["checkpoint"].dropna())) if "checkpoint" in df else []
        run.record({k.replace("@", "_at_"): v for k, v in summarise(df).items()},
                   params={"repeats": repeats, "threads_timed": threads_list},
                   source_run_ids=[checkpoint_run_id(c) for c in checkpoints])
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
