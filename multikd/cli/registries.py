"""`multikd list`: the method's registries (strategies, logit losses, feature losses,
adapters), each entry with its one-line description and parameters."""

from __future__ import annotations

from multikd.cli.common import add_plugin


_LIST_SECTIONS = ("strategies", "logit-losses", "feature-losses", "adapters")


def add_list(sub) -> None:
    p = sub.add_parser(
        "list", help="the registered strategies, logit losses, feature losses and adapters",
        description="Each registry of the method, one entry a name, its one-line description "
        "and its parameters with their defaults. Without a section: all four.",
    )
    p.add_argument("section", nargs="?", choices=_LIST_SECTIONS, help="show one registry only")
    add_plugin(p)
    p.set_defaults(func=_cmd_list)


def _cmd_list(args) -> int:
    from multikd.method.adapters import ADAPTER_REGISTRY
    from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY
    from multikd.method.logit_losses import LOGIT_LOSS_REGISTRY
    from multikd.method.registry import describe
    from multikd.method.strategies import STRATEGIES

    registries = {
        "strategies": (STRATEGIES, "strategies (--strategy NAME --strategy-param KEY=VALUE)"),
        "logit-losses": (LOGIT_LOSS_REGISTRY, "logit losses (loss.logit_loss, loss.logit_params; "
                         "loss.logit_standardize: true z-scores the logits first)"),
        "feature-losses": (FEATURE_LOSS_REGISTRY,
                           "feature losses (loss.feature_loss, loss.feature_params)"),
        "adapters": (ADAPTER_REGISTRY,
                     "adapters (loss.adapter; conv1x1's relu: loss.adapter_relu)"),
    }
    sections = [args.section] if args.section else list(_LIST_SECTIONS)
    print("\n\n".join("\n".join(describe(*registries[name])) for name in sections))
    return 0
