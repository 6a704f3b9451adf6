"""FitNet-MKD: uniform weights with FitNet hints, CA-MKD's baseline."""

from __future__ import annotations

from multikd.method.strategies.base import Strategy, register_strategy, uniform_selection


@register_strategy(
    "fitnet-mkd", "1/K each, with FitNet hints on stage 2 through convreg (CA-MKD's baseline)"
)
class FitNetMKD(Strategy):
    """FitNet-MKD: FitNets hints (Romero et al., ICLR 2015) from every teacher, averaged,
    beside AVER's averaged KD, the baseline of CA-MKD's public code (``helper/loops.py``
    ``train_distill_multi_teacher`` with ``--distill hint --ensemble_method AVERAGE_LOSS``,
    ``scripts/run.sh``: ``-b 100``):

        L_hint = (1/K) sum_k mean_(i,e) (r_k(f_s)_ie - f_tk,ie)^2

    on the middle stage (``--hint_layer 2``: ``feature_names[2]``) through RepDistiller's
    ``ConvReg`` adapter (``models/util.py``): the ``reference`` of ``loss.feature_stage``
    and ``loss.adapter``; weights ``w_ki = 1/K`` as ``uniform``'s, no hint in the first
    epoch (the loop's ``if epoch == 1``). Use it with ``loss.gamma`` > 0 (the reference's
    100).

    Deliberate deviation: the reference computes ``torch.mean(torch.tensor(
    loss_hint_list))``, and ``torch.tensor`` copies the values out of the graph, so its hint
    term is logged but trains nothing. multikd's hint trains the student and the adapters;
    ``loss.feature_grad: false`` gives the reference's detached form."""

    reference = {"adapter": "convreg", "feature_stage": 2, "feature_start_epoch": 2}
    reference_weight_mass = staticmethod(lambda k: k)

    def _select(self, ce, logits, labels):
        return uniform_selection(ce)
