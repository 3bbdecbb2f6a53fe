"""The ``gpunn`` command line: info, check, train and bench.

Every command validates its options first, prints its configuration (device, shapes, dtype,
seed, repeats), then its results. Tables go to stdout; progress bars go to stderr. With
``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import platform
import sys

import click

import gpunn
from gpunn import bench, train
from gpunn._backend import device_info, gpu_unavailable_reason


def _echo_config(pairs: dict) -> None:
    for key, value in pairs.items():
        click.echo(f"{key}: {value}")


def _progress(items, label: str):
    """A progress bar on stderr (stdout stays a clean table or JSON)."""
    return click.progressbar(items, label=label, file=sys.stderr)


def _emu_status() -> str:
    from gpunn.emu import unavailable_reason

    reason = unavailable_reason()
    return "available" if reason is None else f"unavailable: {reason}"


def _cuda_status() -> str:
    reason = gpu_unavailable_reason()
    return "available" if reason is None else f"unavailable: {reason}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(gpunn.__version__, prog_name="gpunn")
def cli():
    """gpunn: hand-written CUDA C kernels for CNNs and RNNs, with a NumPy reference."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(as_json):
    """Backends (numpy, emu, cuda), the GPU and library versions."""
    data = {
        "backends": {"numpy": "available", "emu": _emu_status(), "cuda": _cuda_status()},
        "device": device_info(),
        "cpu": bench._cpu_name(),
        "platform": platform.platform(),
        "versions": bench.versions(),
    }
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo("backends:")
    for name, status in data["backends"].items():
        click.echo(f"  {name:6s} {status}")
    click.echo("device:")
    for key, value in data["device"].items():
        click.echo(f"  {key}: {value}")
    click.echo(f"cpu: {data['cpu']}")
    click.echo(f"platform: {data['platform']}")
    click.echo("versions:")
    for key, value in data["versions"].items():
        click.echo(f"  {key}: {value if value is not None else 'not installed'}")


def _default_kernel_backend() -> str:
    return "cuda" if gpu_unavailable_reason() is None else "emu"


def _require_backend(name: str) -> None:
    """UsageError, before any work, when backend ``name`` cannot run here."""
    if name == "cuda":
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise click.BadParameter(f"cuda is not usable here: {reason}", param_hint="--backend")
    elif name == "emu":
        from gpunn.emu import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise click.BadParameter(f"emu is not usable here: {reason}", param_hint="--backend")


@cli.command()
@click.option(
    "--backend",
    type=click.Choice(bench.BACKENDS),
    default=None,
    help="Where the kernels run [default: cuda with a usable GPU, else emu].",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def check(backend, seed, as_json):
    """Run every kernel op against the float64 NumPy reference; exit 1 on any FAIL.

    Ops: conv2d forward and backward (data, weight, bias), max_pool2d forward (values and
    indices) and backward, the LSTM cell forward and backward, LSTM and tanh-RNN sequences
    forward and backward, on small fixed shapes (odd sizes, batch 1, stride 2, padding at its
    limit, overlapping windows). float32 passes at norm-wise relative error <= 1e-5; max
    pooling forward must be exact.
    """
    backend = backend or _default_kernel_backend()
    _require_backend(backend)
    _echo_config(
        {
            "backend": backend,
            "device": device_info().get("name", bench._cpu_name()),
            "dtype": "float32 against the float64 NumPy reference",
            "seed": seed,
        }
    )
    rows = bench.check_rows(backend, seed)
    failed = [r for r in rows if not r["passed"]]
    kernels = bench.check_kernel_summary(rows) if backend != "numpy" else []
    if as_json:
        click.echo(
            json.dumps(
                {"backend": backend, "rows": rows, "kernels": kernels, "failed": len(failed)}
            )
        )
    else:
        click.echo(bench.format_check_table(rows))
        if kernels:
            click.echo(
                "\nper kernel: the largest error over the outputs of the cases that launched it"
            )
            click.echo(bench.format_kernel_summary(kernels))
        click.echo(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@cli.command("train")
@click.argument("model", type=click.Choice(train.MODELS))
@click.option(
    "--device",
    type=click.Choice(train.DEVICES),
    default="cpu",
    show_default=True,
    help="cpu: NumPy reference; emu: the CUDA C kernels emulated on the CPU (slow); cuda: GPU.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help=f"[default: cnn {train.DEFAULTS['cnn']['epochs']}, lstm "
    f"{train.DEFAULTS['lstm']['epochs']}]",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=train.DEFAULT_BATCH_SIZE, show_default=True
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Adam learning rate [default: cnn {train.DEFAULTS['cnn']['lr']}, lstm "
    f"{train.DEFAULTS['lstm']['lr']}]",
)
@click.option("--seed", type=int, default=train.DEFAULT_SEED, show_default=True)
@click.option(
    "--train-size",
    type=click.IntRange(min=1),
    default=None,
    help="Use only the first N training examples (quick runs); the test set is unchanged.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def train_cmd(model, device, epochs, batch_size, lr, seed, train_size, as_json):
    """Train MODEL (cnn or lstm) on scikit-learn's 8x8 handwritten digits.

    The split is fixed (a seeded permutation; the last 20% is the test set). Prints loss and
    accuracy per epoch, then the final test accuracy and wall time.
    """
    try:
        train.check_device(device)
    except RuntimeError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    epochs = train.DEFAULTS[model]["epochs"] if epochs is None else epochs
    lr = train.DEFAULTS[model]["lr"] if lr is None else lr
    shape = "(N, 1, 8, 8) images" if model == "cnn" else "(T=8, N, I=8) row sequences"
    _echo_config(
        {
            "model": model,
            "device": {
                "cpu": "cpu (NumPy reference)",
                "emu": "emu (the CUDA C kernels on the CPU emulator)",
            }.get(device)
            or f"cuda ({device_info().get('name', 'unknown GPU')})",
            "data": f"sklearn load_digits, {shape}",
            "dtype": "float32",
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
        }
    )

    def progress(batches, epoch):
        with _progress(batches, f"epoch {epoch}/{epochs}") as bar:
            yield from bar

    try:
        result = train.fit(
            model,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            train_size=train_size,
            on_epoch=lambda r: click.echo(train.format_epoch(r)),
            progress=progress,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except RuntimeError as exc:  # scikit-learn missing, the emulator or GPU unusable
        raise click.ClickException(str(exc)) from None
    click.echo(train.format_result(result))
    if as_json:
        summary = {k: v for k, v in result.items() if k != "history"}
        click.echo(json.dumps(summary))


def _ints(value: str | None, name: str, count: tuple[int, ...]):
    """Parse "a,b,c" into positive ints; ``count`` lists the accepted lengths."""
    if value is None:
        return None
    try:
        items = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers, got {value!r}", param_hint=name
        ) from None
    if len(items) not in count:
        raise click.BadParameter(
            f"expected {' or '.join(map(str, count))} comma-separated integers, got {value!r}",
            param_hint=name,
        )
    if min(items) < 1:
        raise click.BadParameter(f"sizes must be positive, got {value!r}", param_hint=name)
    return items


def _custom_shape(family: str, shape, kernel, stride, padding, hidden):
    """The custom shape for op family ``family`` from the shape options."""
    if family == "conv":
        if shape is None or kernel is None:
            raise click.UsageError("a custom conv needs --shape N,C,H,W and --kernel K,R,S")
        N, C, H, W = _ints(shape, "--shape", (4,))
        K, R, S = _ints(kernel, "--kernel", (3,))
        out = bench.ConvShape(N, C, H, W, K, R, S, stride or 1, padding or 0)
        dims = {"H": H + 2 * out.padding, "W": W + 2 * out.padding}
        if R > dims["H"] or S > dims["W"]:
            raise click.BadParameter(
                f"kernel {R}x{S} is larger than the padded input {dims['H']}x{dims['W']}",
                param_hint="--kernel",
            )
    elif family == "pool":
        if shape is None or kernel is None:
            raise click.UsageError("a custom pool needs --shape N,C,H,W and --kernel R[,S]")
        N, C, H, W = _ints(shape, "--shape", (4,))
        ks = _ints(kernel, "--kernel", (1, 2))
        R, S = (ks[0], ks[0]) if len(ks) == 1 else ks
        out = bench.PoolShape(N, C, H, W, R, S, stride or R, padding or 0)
        if 2 * out.padding > min(R, S):
            raise click.BadParameter(
                f"pool padding {out.padding} is more than half the kernel {R}x{S}",
                param_hint="--padding",
            )
    elif family == "cell":
        if shape is None:
            raise click.UsageError("a custom lstm_cell needs --shape N,HID")
        out = bench.CellShape(*_ints(shape, "--shape", (2,)))
    else:
        if shape is None or hidden is None:
            raise click.UsageError("a custom sequence needs --shape T,N,I and --hidden HID")
        out = bench.SeqShape(*_ints(shape, "--shape", (3,)), hidden)
    return out


BENCH_OPS = (*bench.OPS, "all")


@cli.command("bench")
@click.argument("op", type=click.Choice(BENCH_OPS))
@click.option(
    "--backend",
    type=click.Choice(bench.BACKENDS),
    default=None,
    help="Where gpunn runs [default: cuda with a usable GPU, else numpy].",
)
@click.option("--peer", type=click.Choice(bench.PEERS), default="torch", show_default=True)
@click.option("--preset", default=None, help="One named shape (see --list-presets).")
@click.option("--list-presets", is_flag=True, help="List the presets and exit.")
@click.option("--shape", default=None, help="Custom shape: N,C,H,W (conv, pool), N,HID "
              "(lstm_cell) or T,N,I (lstm, lstm_train, rnn, rnn_train).")  # fmt: skip
@click.option("--kernel", default=None, help="Custom kernel: K,R,S (conv) or R[,S] (pool).")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Custom stride.")
@click.option("--padding", type=click.IntRange(min=0), default=None, help="Custom padding.")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="Custom HID.")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=None,
    help=f"Timed calls per measurement [default: {bench.DEFAULT_REPEAT}].",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=None,
    help=f"Untimed calls first [default: {bench.DEFAULT_WARMUP}].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs.")
@click.option(
    "--peak-gflops",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak fp32 GFLOP/s for the roofline [default: datasheet on GPU, measured matmul on CPU].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (header + rows).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV rows.")
def bench_cmd(
    op, backend, peer, preset, list_presets, shape, kernel, stride, padding, hidden, repeat,
    warmup, seed, peak_gflops, as_json, as_csv,
):  # fmt: skip
    """Time OP (or all ops) with gpunn next to PyTorch, against the roofline.

    Each row: median time over the repeats with min-max, GFLOP/s, GB/s, the fraction of the
    roofline floor max(bytes/bandwidth, flops/peak), the ratio gpunn time / peer time (below
    1: gpunn is faster) and the norm-wise relative errors against the float64 reference.
    """
    if list_presets:
        for name in bench.OPS if op == "all" else (op,):
            presets = bench.PRESETS[bench.OPS[name].family]
            for pname, pshape in presets.items():
                click.echo(f"{name:20s} {pname:20s} {pshape.describe()}")
        return
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    backend = backend or ("cuda" if gpu_unavailable_reason() is None else "numpy")
    _require_backend(backend)
    if peer == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise click.BadParameter(
                "torch is not installed (pip install torch==2.13.0) or pass --peer none",
                param_hint="--peer",
            ) from None
    custom = any(v is not None for v in (shape, kernel, stride, padding, hidden))
    if custom:
        if op == "all":
            raise click.UsageError("custom shapes need one OP, not 'all'")
        if preset is not None:
            raise click.UsageError("choose --preset or custom shape options, not both")
        family = bench.OPS[op].family
        cases = [
            bench.Case(op, "custom", _custom_shape(family, shape, kernel, stride, padding, hidden))
        ]
    else:
        try:
            cases = bench.preset_cases(op, preset, backend)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--preset") from None
    settings = bench.Settings(
        backend=backend,
        peer=peer,
        warmup=bench.DEFAULT_WARMUP[backend] if warmup is None else warmup,
        repeat=bench.DEFAULT_REPEAT[backend] if repeat is None else repeat,
        seed=seed,
        peak_gflops=peak_gflops,
    )
    try:
        harness = bench.Harness(settings)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--peak-gflops") from None
    header = harness.header()
    if not (as_json or as_csv):
        click.echo(bench.format_header(header))
        click.echo()
    rows = []
    with _progress(cases, "bench") as bar:
        for case in bar:
            rows.append(harness.measure(case))
    if as_json:
        click.echo(bench.to_json(header, rows))
    elif as_csv:
        click.echo(bench.to_csv(rows), nl=False)
    else:
        click.echo(bench.format_table(rows))


def main(argv=None):
    """Entry point of the ``gpunn`` script and of ``python cli.py``."""
    cli.main(args=argv, prog_name="gpunn")


if __name__ == "__main__":
    main()
