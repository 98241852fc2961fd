"""Gradient flow: the norm of dL/dx at the input of every residual unit, plain vs residual, at
initialisation and after training, with the branch's last BN scale initialised to 1 (default)
or to 0 (``zero_init_residual``, Goyal et al. 2017 §5.1).

The argument (He et al. 2016, Eq. 5): with identity shortcuts the gradient reaching unit l is
dL/dx_l = dL/dx_L (1 + d/dx_l sum_i F_i), so it carries dL/dx_L directly and cannot vanish
however deep the net; in a plain net it is a product of per-layer Jacobians instead.

    python -m resnet_jax.experiments.gradient_flow --quick  # a few minutes on 2 CPU cores
    python -m resnet_jax.experiments.gradient_flow          # 20/56/110, 64k iterations

Writes ``gradient_flow.png`` (one panel per depth and state, log scale), ``results.md`` and
``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax.experiments import common
from resnet_jax.models.blocks import ResidualUnit

# (key suffix, family, label suffix, model options)
VARIANTS = (
    ("plain", "plain", "", {}),
    ("resnet", "resnet", "", {}),
    ("resnet_zero_init", "resnet", " (zero-init last BN)", {"zero_init_residual": True}),
)
GRAD_IMAGES = 128


def run(argv: Sequence[str] | None = None) -> dict:
    args = common.parse_args("gradient_flow", __doc__.split("\n\n")[0], argv,
                             common.add_runs_flag)
    steps = args.steps or (common.QUICK_ANALYSIS_STEPS if args.quick else 64_000)
    batch = args.batch or (common.QUICK_ANALYSIS_BATCH if args.quick else 128)
    depths = args.depths or ([20, 56] if args.quick else [20, 56, 110])
    report = common.Report("gradient_flow", args)
    images = labels = None

    nets: dict[str, dict] = {}
    for depth in depths:
        for suffix, family, label_suffix, options in VARIANTS:
            key = f"{suffix}{depth}"
            if args.runs and suffix == "resnet_zero_init":
                continue  # --runs (e.g. the degradation runs) holds default-init nets only
            workdir = common.trained_net(args, key.replace("resnet_zero_init", "resnet_zi"),
                                         family, depth, steps=steps, batch=batch, extra=options)
            model, trained, config = common.load_trained(workdir)
            if images is None:
                images, labels = common.eval_batch(config, GRAD_IMAGES)
            init = jax.jit(lambda k, m=model, x=images[:2]: m.init(k, x, train=False))(
                jax.random.key(config.seed, impl="rbg"))
            nets[key] = {
                "label": common.label(family, depth, label_suffix), "depth": depth,
                "variant": suffix, "workdir": workdir,
            }
            nets[key]["init"], nets[key]["trained"] = unit_input_grad_norms(
                model, (init, trained), images, labels)
    report.data.update(steps=steps if not args.runs else "from --runs", batch=batch,
                       depths=depths, grad_images=GRAD_IMAGES, nets=nets)

    plot(nets, depths, Path(args.out) / "gradient_flow.png")
    rows = []
    for n in nets.values():
        for state in ("init", "trained"):
            g = np.asarray(n[state])
            rows.append([n["label"], state, f"{g[0]:.3g}", f"{g[-1]:.3g}",
                         f"{g[0] / g[-1]:.3g}", f"{g.max() / g.min():.3g}"])
    trained = (f"trained for {steps} iterations of batch {batch}" if not args.runs
               else f"taken from {args.runs}")
    report.add(
        f"Nets {trained}. L2 norm of the gradient of the mean cross-entropy over {GRAD_IMAGES} "
        "CIFAR-10 test images with respect to each unit's input, in training mode (batch "
        "statistics, as during training). Unit 1 is nearest the input.\n"
    )
    report.add(report.table(
        ["net", "state", "first unit", "last unit", "first / last", "max / min"], rows))
    claims = []
    for depth in depths:
        for state in ("init", "trained"):
            p, r = (np.asarray(nets[f"{f}{depth}"][state]) for f in ("plain", "resnet"))
            spread_p, spread_r = p.max() / p.min(), r.max() / r.min()
            claims.append({
                "claim": f"{state}, depth {depth}: the gradient norm varies less across units in "
                         "the ResNet than in the plain net (max/min over units)",
                "holds": bool(spread_r < spread_p),
                "detail": f"{spread_r:.3g} vs {spread_p:.3g}",
            })
    report.claims(claims)
    report.add("![gradient flow](gradient_flow.png)")
    report.write(common.command_line("gradient_flow", argv))
    return report.data


def _is_unit_call(context) -> bool:
    return isinstance(context.module, ResidualUnit) and context.method_name == "__call__"


def unit_input_grad_norms(model: nn.Module, variable_sets: Sequence[dict], images: np.ndarray,
                          labels: np.ndarray) -> list[list[float]]:
    """||dL/dx|| at the input x of every ResidualUnit, in network order, for each set of
    variables of ``model`` (one compilation serves them all).

    A zero tensor is added to each unit's input through a method interceptor, and the loss is
    differentiated with respect to those zeros (the model itself is left untouched).
    """
    order: list[str] = []
    shapes: dict[str, jax.ShapeDtypeStruct] = {}

    def record(next_fun, args, kwargs, context):
        if _is_unit_call(context):
            name = "/".join(context.module.path)
            order.append(name)
            shapes[name] = jax.ShapeDtypeStruct(args[0].shape, args[0].dtype)
        return next_fun(*args, **kwargs)

    def forward(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])[0]

    with nn.intercept_methods(record):
        jax.eval_shape(forward, variable_sets[0], images)

    def loss(deltas, v, x, y):
        def perturb(next_fun, args, kwargs, context):
            if _is_unit_call(context):
                args = (args[0] + deltas["/".join(context.module.path)], *args[1:])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(perturb):
            logits = forward(v, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
    grad_fn = jax.jit(jax.grad(loss))
    out = []
    for variables in variable_sets:
        grads = grad_fn(zeros, variables, images, labels)
        out.append([float(jnp.linalg.norm(grads[k].astype(jnp.float32))) for k in order])
    return out


def plot(nets: dict[str, dict], depths: Sequence[int], path: Path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(len(depths), 2, figsize=(11, 3.4 * len(depths)), squeeze=False)
    styles = {"plain": ("tab:red", "--"), "resnet": ("tab:blue", "-"),
              "resnet_zero_init": ("tab:green", "-.")}
    for row, depth in zip(axes, depths, strict=True):
        for ax, state in zip(row, ("init", "trained"), strict=True):
            for n in nets.values():
                if n["depth"] != depth:
                    continue
                color, style = styles[n["variant"]]
                g = n[state]
                ax.semilogy(np.arange(1, len(g) + 1), g, style, color=color, label=n["label"])
            ax.set_title(f"depth {depth}, {'at initialisation' if state == 'init' else 'trained'}")
            ax.set_xlabel("residual unit (1 = nearest the input)")
            ax.set_ylabel("||dL/dx||")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
