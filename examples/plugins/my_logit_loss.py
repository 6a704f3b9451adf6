"""A plugin logit loss: ``sym-kl``, the symmetric KL divergence of the softened outputs.

    l_ki = T^2 / 2 * ( KL(p_ki || q_i) + KL(q_i || p_ki) ),
    p_ki = softmax(t_ki / T),  q_i = softmax(s_i / T)

(Jeffreys' divergence, halved; the T^2 keeps its gradient scale as in Hinton et al. 2015.)
Use it without forking multikd:

    multikd distill --plugin examples/plugins/my_logit_loss.py --set loss.logit_loss=sym-kl ...
"""

import torch.nn.functional as F

from multikd.method.logit_losses import register_logit_loss


@register_logit_loss("sym-kl", "T^2 (KL(p||q) + KL(q||p)) / 2 of the softened outputs")
def sym_kl(student, teachers, labels, temperature: float):
    """Per teacher and sample ``[K,B]``: student ``[B,C]``, teachers ``[K,B,C]``."""
    log_q = F.log_softmax(student.float() / temperature, dim=-1).unsqueeze(0)  # [1,B,C]
    log_p = F.log_softmax(teachers.float() / temperature, dim=-1)  # [K,B,C]
    both = (log_p.exp() - log_q.exp()) * (log_p - log_q)  # p log p/q + q log q/p, per class
    return both.sum(-1) * temperature**2 / 2
