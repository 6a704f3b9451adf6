"""Strategies: hand-computed weights on one fixed 3-teacher case, invariants, registry errors."""

import io
import math

import pytest
import torch

from multikd.errors import StrategyError, TrainingError
from multikd.method.strategies import (
    StepContext, check_finite, create_strategy, list_strategies,
)

# K = 3 teachers, B = 3 samples, C = 3 classes, labels [0, 1, 2]
CE = [[0.2, 1.5, 1.2], [0.9, 0.3, 0.7], [2.5, 2.0, 1.0]]
LOGITS = [
    [[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],  # right, wrong, wrong
    [[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.0, 0.0]],  # wrong, right, wrong
    [[3.0, 0.0, 1.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0]],  # right, wrong, wrong
]
LABELS = [0, 1, 2]
BATCH_MEAN = [sum(row) / 3 for row in CE]  # 0.9667, 0.6333, 1.8333


STUDENT = [[0.5, 0.0, -0.5], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


def _context():
    """What the distiller hands strategies that weight teachers by the student (aekd) and
    their features (mtkd-rl, mmkd): fixed maps, 3 teachers of 4x2x2, a student of 5x2x2."""
    g = torch.Generator().manual_seed(0)
    return StepContext(
        torch.tensor(STUDENT), 4.0, 2, student_feature=torch.randn(3, 5, 2, 2, generator=g),
        adapted=[torch.randn(3, 4, 2, 2, generator=g) for _ in range(3)],
        teacher_features=[torch.randn(3, 4, 2, 2, generator=g) for _ in range(3)],
    )


def _create(name, **params):
    """``create_strategy``, and for learned strategies their networks built for this case."""
    from multikd.method.learned import StrategySpec

    strategy = create_strategy(name, **params)
    if strategy.learns:
        strategy.bind(StrategySpec(3, 3, [(4, 2, 2)] * 3, (5, 2, 2), 3))
    return strategy


def _select(name, **params):
    """One selection on the fixed case: in float64 (strategies keep it), so that the weights
    equal the ``math`` module's to 1e-12 on any CPU; learned strategies' networks are
    float32 and get float32."""
    strategy = _create(name, **params)
    dtype = torch.float32 if strategy.learns else torch.float64
    return strategy.select(torch.tensor(CE, dtype=dtype), torch.tensor(LOGITS, dtype=dtype),
                           torch.tensor(LABELS), context=_context())


def _columns(weights_per_teacher):
    """[w_0, w_1, w_2] per teacher (same for every sample) -> [K,B] list."""
    return [[w] * 3 for w in weights_per_teacher]


def _softmax(values, tau=1.0):
    e = [math.exp(v / tau) for v in values]
    return [v / sum(e) for v in e]


def _assert_weights(selection, expected):
    assert selection.weights.dtype == torch.float64
    assert selection.weights.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


def test_uniform():
    _assert_weights(_select("uniform"), _columns([1 / 3] * 3))


def test_ce_filter_default_drops_teachers_above_mean_batch_ce():
    # mean of batch CEs = 1.1444: teachers 0 and 1 survive, weights softmax(-CE) over them
    sel = _select("ce-filter")
    w0, w1 = _softmax([-BATCH_MEAN[0], -BATCH_MEAN[1]])
    _assert_weights(sel, _columns([w0, w1, 0.0]))
    assert sel.kept.tolist() == _columns([True, True, False])


def test_ce_filter_margin_keep_and_tau():
    _assert_weights(_select("ce-filter", margin=1.0), _columns(_softmax([-m for m in BATCH_MEAN])))
    _assert_weights(_select("ce-filter", keep=1), _columns([0.0, 1.0, 0.0]))
    w = _softmax([-BATCH_MEAN[0], -BATCH_MEAN[1]], tau=0.5)
    _assert_weights(_select("ce-filter", keep=2, tau=0.5), _columns(w + [0.0]))


def test_ce_filter_per_sample():
    # sample 0: CE [0.2, 0.9, 2.5], mean 1.2 -> keep 0, 1; sample 1: [1.5, 0.3, 2.0], mean
    # 1.267 -> keep 1; sample 2: [1.2, 0.7, 1.0], mean 0.967 -> keep 1
    sel = _select("ce-filter", granularity="sample", tau=0.5)
    a, b = _softmax([-0.2, -0.9], tau=0.5)
    _assert_weights(sel, [[a, 0.0, 0.0], [b, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert sel.kept.tolist() == [[True, False, False], [True, True, True], [False, False, False]]


def test_ca_mkd():
    expected = [[0.0] * 3 for _ in range(3)]
    for i in range(3):
        column = [CE[k][i] for k in range(3)]
        e = [math.exp(c) for c in column]
        for k in range(3):
            expected[k][i] = (1 - e[k] / sum(e)) / 2
    _assert_weights(_select("ca-mkd"), expected)
    single = create_strategy("ca-mkd").weights(
        torch.tensor([CE[0]]), torch.tensor([LOGITS[0]]), torch.tensor(LABELS)
    )
    assert single.tolist() == [[1.0, 1.0, 1.0]]


def test_ebkd():
    def entropy(z):
        p = _softmax(z)
        return -sum(v * math.log(v) for v in p)

    expected = [[0.0] * 3 for _ in range(3)]
    for i in range(3):
        h = [entropy(LOGITS[k][i]) for k in range(3)]
        for k in range(3):
            expected[k][i] = (1 - h[k] / sum(h)) / 2
    sel = _select("ebkd")
    _assert_weights(sel, expected)
    assert sel.kept.all()
    # sample 0: teacher 2 (logits [3,0,1]) is the most certain, teacher 1 ([0,1,0]) the least
    assert sel.weights[:, 0].argsort(descending=True).tolist() == [2, 0, 1]


def test_ebkd_one_teacher_and_certain_teachers():
    one = create_strategy("ebkd").weights(
        torch.tensor([CE[0]]), torch.tensor([LOGITS[0]]), torch.tensor(LABELS)
    )
    assert one.tolist() == [[1.0, 1.0, 1.0]]
    certain = torch.tensor([[[1e4, 0.0, 0.0]], [[0.0, 1e4, 0.0]]])  # entropies exactly 0
    weights = create_strategy("ebkd").weights(torch.zeros(2, 1), certain, torch.tensor([0]))
    assert weights.tolist() == [[0.5], [0.5]]


def test_best_per_batch_and_per_sample():
    _assert_weights(_select("best"), _columns([0.0, 1.0, 0.0]))
    _assert_weights(_select("best", granularity="sample"), [[1, 0, 0], [0, 1, 1], [0, 0, 0]])


def test_correct_only_falls_back_to_the_best_when_nobody_is_right():
    # sample 0: teachers 0 and 2 right; sample 1: teacher 1; sample 2: nobody -> lowest CE (1)
    sel = _select("correct-only")
    _assert_weights(sel, [[0.5, 0, 0], [0, 1, 1], [0.5, 0, 0]])
    assert sel.kept.tolist() == [[True, False, False], [False, True, True], [True, False, False]]


def test_fixed():
    sel = _select("fixed", weights=[1, 2, 0])
    _assert_weights(sel, _columns([1 / 3, 2 / 3, 0.0]))
    assert sel.kept.tolist() == _columns([True, True, False])
    with pytest.raises(StrategyError, match="2 weights but there are 3 teachers"):
        _select("fixed", weights=[1, 2])


def test_random_is_seeded_one_hot_and_resumes_exactly():
    ce, logits, labels = torch.tensor(CE), torch.tensor(LOGITS), torch.tensor(LABELS)

    def draws(strategy, n):
        out = []
        for _ in range(n):
            w = strategy.weights(ce, logits, labels)
            assert sorted(w[:, 0].tolist()) == [0.0, 0.0, 1.0]
            assert torch.equal(w, w[:, :1].expand(3, 3))
            out.append(int(w[:, 0].argmax()))
        return out

    a, b = create_strategy("random", seed=7), create_strategy("random", seed=7)
    assert draws(a, 20) == draws(b, 20)
    assert set(draws(create_strategy("random", seed=0), 60)) == {0, 1, 2}

    interrupted = create_strategy("random", seed=3)
    draws(interrupted, 5)
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    expected = draws(interrupted, 10)
    resumed = create_strategy("random", seed=3)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    assert draws(resumed, 10) == expected


ALL = [(n, {"weights": [1.0, 2.0, 3.0]} if n == "fixed" else {}) for n in list_strategies()]
ALL += [
    ("ce-filter", {"granularity": "sample"}),
    ("ce-filter", {"keep": 2}),
    ("best", {"granularity": "sample"}),
]


@pytest.mark.parametrize("name,params", ALL)
def test_weights_are_a_distribution_and_kept_covers_them(name, params):
    sel = _select(name, **params)
    assert sel.weights.shape == (3, 3) and sel.kept.shape == (3, 3)
    assert (sel.weights >= 0).all()
    torch.testing.assert_close(sel.weights.sum(0), torch.ones(3, dtype=sel.weights.dtype))
    assert not ((sel.weights > 0) & ~sel.kept).any()


# random draws by index, fixed takes weights by position, and the learned strategies'
# networks read the teachers in order (their inputs are concatenated): none is equivariant
PERMUTABLE = [(n, p) for n, p in ALL if n not in ("random", "fixed", "mtkd-rl", "mmkd")]


@pytest.mark.parametrize("name,params", PERMUTABLE)
def test_permuting_teachers_permutes_weights(name, params):
    perm = torch.tensor([2, 0, 1])
    ce, logits, labels = torch.tensor(CE), torch.tensor(LOGITS), torch.tensor(LABELS)
    strategy = create_strategy(name, **params)
    base = strategy.select(ce, logits, labels, context=_context())
    permuted = strategy.select(ce[perm], logits[perm], labels, context=_context())
    torch.testing.assert_close(permuted.weights, base.weights[perm])
    assert torch.equal(permuted.kept, base.kept[perm])


@pytest.mark.parametrize("granularity", ["batch", "sample"])
@pytest.mark.parametrize("params", [{"margin": -100.0}, {"keep": 1}])
def test_the_best_teacher_is_always_kept(granularity, params):
    sel = _select("ce-filter", granularity=granularity, **params)
    best = [1, 1, 1] if granularity == "batch" else [0, 1, 1]
    expected = [[1.0 if best[i] == k else 0.0 for i in range(3)] for k in range(3)]
    _assert_weights(sel, expected)
    # ties: all teachers equally good, everything filtered but the first of them
    tie = create_strategy("ce-filter", granularity=granularity, margin=-1.0).select(
        torch.ones(3, 2), torch.zeros(3, 2, 3), torch.tensor([0, 1])
    )
    assert tie.weights.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("name,params", ALL)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_teacher_outputs_are_reported_by_teacher(name, params, bad):
    ce = torch.tensor(CE)
    ce[1, 2] = bad
    with pytest.raises(TrainingError, match="teacher #1 produced NaN or infinite"):
        _create(name, **params).select(ce, torch.tensor(LOGITS), torch.tensor(LABELS),
                                       context=_context())
    logits = torch.tensor(LOGITS)
    logits[2, 0, 1] = bad
    with pytest.raises(TrainingError, match="teacher 'vgg13' produced"):
        check_finite(torch.tensor(CE), logits, ["resnet8", "wrn", "vgg13"])


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(StrategyError) as err:
        create_strategy("ce-filtr")
    names = ["uniform", "ce-filter", "ca-mkd", "ebkd", "best", "correct-only", "random", "fixed"]
    for name in names:
        assert name in str(err.value)
    assert type(create_strategy("CE_Filter")).name == "ce-filter"


def test_unknown_or_ill_typed_parameters_are_rejected_with_the_accepted_ones():
    accepted = "unknown parameter.*temperature.*margin, keep, tau, granularity"
    with pytest.raises(StrategyError, match=accepted):
        create_strategy("ce-filter", temperature=2.0)
    with pytest.raises(StrategyError, match="takes no parameters"):
        create_strategy("uniform", tau=1.0)
    bad = [
        ("ce-filter", {"tau": "hot"}, "tau must be a number"),
        ("ce-filter", {"tau": 0.0}, "tau must be > 0"),
        ("ce-filter", {"keep": 1.5}, "keep must be an integer"),
        ("ce-filter", {"keep": True}, "keep must be an integer"),
        ("ce-filter", {"keep": 0}, "keep must be >= 1"),
        ("ce-filter", {"keep": 1, "margin": 0.5}, "not both"),
        ("ce-filter", {"granularity": "epoch"}, "batch, sample"),
        ("random", {"seed": "1"}, "seed must be an integer"),
        ("fixed", {}, "needs weights"),
        ("fixed", {"weights": [0, 0]}, "not all zero"),
        ("fixed", {"weights": [1, -1]}, "non-negative"),
    ]
    for name, params, message in bad:
        with pytest.raises(StrategyError, match=message):
            create_strategy(name, **params)


def test_stateless_strategies_have_trivial_state():
    strategy = create_strategy("ce-filter")
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})
    with pytest.raises(StrategyError, match="has no state"):
        strategy.load_state_dict({"generator": torch.zeros(3)})
