"""Models: every one trains with elbo and iwae and is scored; the defining property of each prior."""

import numpy as np
import pyro
import pytest
import torch

from ppl_vae import TrainConfig, Trainer, log_px
from ppl_vae.data import load_dataset
from ppl_vae.guides import FlowGuide, HierarchicalGuide, MeanFieldGuide
from ppl_vae.models import VAE, HierarchicalVAE


@pytest.fixture(scope="module")
def mnist_tiny():
    d = load_dataset("mnist5k")
    return d.train.x[:200], d.eval_x("test")[:40], d.test.x[:40]


def _vae(prior="normal", likelihood="bernoulli", network="mlp", guide_cls=MeanFieldGuide, **prior_kwargs):
    model = VAE(z_dim=4, hidden=(32,), prior=prior, likelihood=likelihood, network=network, prior_kwargs=prior_kwargs or None)
    guide = guide_cls(z_dim=4, hidden=(32,), network=network)
    model.attach_guide(guide)
    return model, guide


CASES = {
    "normal": lambda: _vae(),
    "vamp": lambda: _vae("vamp", num_components=10),
    "flow": lambda: _vae("flow"),
    "acn": lambda: _vae("acn", num_neighbours=3),
    "conv": lambda: _vae(network="conv"),
    "gaussian": lambda: _vae(likelihood="gaussian"),
    "continuous_bernoulli": lambda: _vae(likelihood="continuous_bernoulli"),
    "hierarchical": lambda: (
        HierarchicalVAE(z_dims=(4, 2), hidden=((32,), (16,))),
        HierarchicalGuide(z_dims=(4, 2), hidden=((32,), (16,))),
    ),
    "vamp+iaf": lambda: _vae("vamp", guide_cls=FlowGuide, num_components=5),
    "hierarchical+iaf+vamp": lambda: _hierarchical(prior="vamp", num_components=5, flow="iaf"),
}


def _hierarchical(prior="normal", num_components=5, flow=None):
    layers = dict(z_dims=(4, 2), hidden=((32,), (16,)))
    model = HierarchicalVAE(**layers, prior=prior, num_components=num_components)
    guide = HierarchicalGuide(**layers, flow=flow)
    model.attach_guide(guide)
    return model, guide


CONTINUOUS = {"gaussian", "continuous_bernoulli"}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("objective", ["elbo", "iwae:k=3"])
def test_every_model_trains_and_is_scored(mnist_tiny, case, objective):
    train_x, test_bin, test_grey = mnist_tiny
    pyro.set_rng_seed(0)
    model, guide = CASES[case]()
    dynamic = case not in CONTINUOUS  # intensities for continuous likelihoods
    test_x = test_grey if case in CONTINUOUS else test_bin
    config = TrainConfig(epochs=2, batch_size=50, progress=False, eval_every=0, objective=objective)
    history = Trainer(model, guide, config).fit(train_x, test_x, dynamic=dynamic)
    assert all(np.isfinite(r["val_elbo"]) for r in history)
    est = log_px(model, guide, test_x, k=10)
    assert est.k == 10 and np.isfinite(est.log_px) and est.log_px > history[-1]["val_elbo"] - 1.0


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_hierarchical_model_is_burda_et_al_two_layer_network():
    # Burda et al. (2016), 2 stochastic layers: x-200-200-[100]-100-100-[50], tanh; a Gaussian
    # layer is a linear map to mean and log-scale (2 x units outputs). Counted layer by layer:
    # q(z1|x): 784*200+200 + 200*200+200 + 200*200+200 = 237,400
    # q(z2|z1): 100*100+100 + 100*100+100 + 100*100+100 = 30,300
    # p(z1|z2): 50*100+100 + 100*100+100 + 100*200+200 = 35,400
    # p(x|z1): 100*200+200 + 200*200+200 + 200*784+784 = 217,984
    model, guide = HierarchicalVAE(), HierarchicalGuide()
    assert _count(guide) == 237_400 + 30_300
    assert _count(model) == 35_400 + 217_984
    acts = {type(m).__name__ for m in model.modules()} | {type(m).__name__ for m in guide.modules()}
    assert "Tanh" in acts and "ReLU" not in acts
    trace = pyro.poutine.trace(model).get_trace(torch.zeros(3, 784))
    assert trace.nodes["z1"]["value"].shape == (3, 100) and trace.nodes["z2"]["value"].shape == (3, 50)


def test_vamp_prior_is_the_mixture_of_guide_densities_at_the_pseudo_inputs():
    pyro.set_rng_seed(1)
    model, guide = _vae("vamp", num_components=7)
    z = torch.randn(11, 4)
    log_p = model.prior(torch.zeros(1, 784)).log_prob(z)
    components = guide.posterior(model.prior.pseudo_inputs)  # one q(z|u_k) per pseudo-input
    manual = torch.stack([components.log_prob(zi.expand(7, 4)) for zi in z])  # (11, 7)
    expected = torch.logsumexp(manual, dim=1) - np.log(7)
    assert torch.allclose(log_p, expected, atol=1e-5)
    assert model.prior.pseudo_inputs.min() >= 0 and model.prior.pseudo_inputs.max() <= 1


def test_flow_prior_is_a_normalised_density():
    pyro.set_rng_seed(2)
    model, _ = _vae("flow")
    prior = model.prior(torch.zeros(1, 784))
    samples = prior.sample((2000,))
    # a normalised density: E_r[p(z) / r(z)] = 1 for a wider Gaussian r, by importance sampling
    base = pyro.distributions.Normal(0.0, 1.5).expand([4]).to_event(1)
    z = base.sample((200000,))
    ratio = (prior.log_prob(z) - base.log_prob(z)).exp()
    assert ratio.mean().item() == pytest.approx(1.0, abs=4 * ratio.std().item() / 200000**0.5 + 0.01)
    assert torch.isfinite(prior.log_prob(samples)).all()


def test_acn_neighbours_are_the_true_k_nearest_and_the_prior_is_conditioned_on_one():
    pyro.set_rng_seed(3)
    model, guide = _vae("acn", num_neighbours=4)
    bank_x = torch.rand(300, 784)
    model.refresh(bank_x)
    codes = model.prior.codes
    assert codes.shape == (300, 4)
    assert torch.allclose(codes, guide.posterior(bank_x).mean, atol=1e-6)  # posterior means
    queries = torch.randn(25, 4)
    dist, idx = model.prior.neighbours(queries, exclude_nearest=False)
    brute = np.argsort(((queries[:, None, :] - codes[None]) ** 2).sum(-1).numpy(), axis=1)[:, :4]
    assert (np.sort(idx.numpy(), 1) == np.sort(brute, 1)).all()
    assert torch.all(dist[:, :-1] <= dist[:, 1:])
    # training: a training point's own code is excluded, and the prior is p(z | c) for one neighbour
    _, idx_train = model.prior.neighbours(codes[:5], exclude_nearest=True)
    assert not (idx_train == torch.arange(5)[:, None]).any()
    model.train()
    x = bank_x[:5]
    prior = model.prior(x)
    _, idx_x = model.prior.neighbours(model.prior.encode(x), exclude_nearest=True)
    candidates = model.prior.conditional(codes[idx_x]).base_dist.loc  # (5, K, z)
    chosen = prior.base_dist.loc  # (5, z)
    matches = (candidates - chosen[:, None, :]).abs().amax(-1) < 1e-6
    assert matches.any(1).all()  # each point's prior mean is that of one of its K neighbours
    # evaluation: the uniform mixture over the K neighbours' priors
    model.eval()
    mixture = model.prior(x)
    z = torch.randn(5, 4)
    _, idx_eval = model.prior.neighbours(model.prior.encode(x), exclude_nearest=False)
    expected = torch.logsumexp(model.prior.conditional(codes[idx_eval]).log_prob(z[:, None, :]), 1) - np.log(4)
    assert torch.allclose(mixture.log_prob(z), expected, atol=1e-5)


def test_acn_neighbours_are_ranked_by_exact_distances_where_float32_cdist_is_not():
    # codes far from the origin: cdist's matrix-product form loses ~0.07 here, and reorders the
    # top 5 of most rows; the compiled step's check then refused ACN on a 50,000-code bank
    model, _ = _vae("acn", num_neighbours=5)
    g = torch.Generator().manual_seed(0)
    model.prior.codes = 300.0 + torch.randn(500, 4, generator=g)
    queries = 300.0 + torch.randn(20, 4, generator=g)
    exact = torch.cdist(queries.double(), model.prior.codes.double())
    rough = torch.cdist(queries, model.prior.codes).topk(5, largest=False).indices
    truth = exact.topk(5, largest=False).indices
    assert (rough != truth).any(1).sum() >= 5  # the case is one float32 gets wrong
    dist, idx = model.prior.neighbours(queries, exclude_nearest=False)
    assert torch.equal(idx, truth)  # the same neighbours in the same order
    assert torch.allclose(dist.double(), exact.gather(1, truth), rtol=1e-6)


def test_acn_without_a_code_bank_says_what_to_do():
    model, _ = _vae("acn")
    with pytest.raises(RuntimeError, match="refresh"):
        model(torch.zeros(2, 784))
    vae = VAE(z_dim=2, hidden=(4,), prior="vamp")
    with pytest.raises(RuntimeError, match="attach_guide"):
        vae(torch.zeros(2, 784))
    with pytest.raises(ValueError, match="unknown prior 'gmm'"):
        VAE(prior="gmm")
    with pytest.raises(ValueError, match="28x28"):
        VAE(x_dim=64, network="conv")


def test_acn_chain_sampling_gives_images(mnist_tiny):
    pyro.set_rng_seed(4)
    model, guide = _vae("acn", num_neighbours=3)
    model.refresh(mnist_tiny[0])
    images = model.sample_images(6, mnist_tiny[1])
    assert images.shape == (6, 784) and images.min() >= 0 and images.max() <= 1


def test_hierarchical_vamp_prior_is_the_guides_top_layer_at_the_pseudo_inputs():
    """p(z2) = (1/K) sum_k q(z2 | mean of q(z1 | u_k)), for Gaussian and IAF layers alike."""
    for flow in (None, "iaf"):
        pyro.set_rng_seed(3)
        model, guide = _hierarchical(prior="vamp", num_components=6, flow=flow)
        u = model.prior.pseudo_inputs
        z1 = guide.layers[0](u)[0] if flow is None else guide.layers[0].point(u)
        top = guide.layers[1](z1) if flow is None else None
        components = pyro.distributions.Normal(*top).to_event(1) if flow is None else guide.layers[1].posterior(z1)
        z2 = torch.randn(9, 2)
        manual = torch.stack([components.log_prob(z.expand(6, 2)) for z in z2])
        expected = torch.logsumexp(manual, dim=1) - np.log(6)
        assert torch.allclose(model.prior(torch.zeros(1, 784)).log_prob(z2), expected, atol=1e-5)
    with pytest.raises(ValueError, match="'normal' or 'vamp'"):
        HierarchicalVAE(prior="acn")


def test_hierarchical_iaf_guide_trains_with_dreg_and_is_a_density(mnist_tiny):
    """Each layer of the IAF guide is a normalised density of its input (importance sampling
    against a wide Gaussian), and DReG, which re-evaluates log q at detached samples, trains it."""
    train_x, test_bin, _ = mnist_tiny
    pyro.set_rng_seed(4)
    model, guide = _hierarchical(flow="iaf")
    layer = guide.layers[1].posterior(torch.zeros(1, 4))
    base = pyro.distributions.Normal(0.0, 2.0).expand([1, 2]).to_event(1)
    z = base.sample((100000,))
    ratio = (layer.log_prob(z) - base.log_prob(z)).exp()
    assert ratio.mean().item() == pytest.approx(1.0, abs=4 * ratio.std().item() / 100000**0.5 + 0.01)
    config = TrainConfig(epochs=1, batch_size=50, progress=False, eval_every=0, objective="dreg:k=3")
    history = Trainer(model, guide, config).fit(train_x, test_bin, dynamic=True)
    assert np.isfinite(history[-1]["val_elbo"])
    assert {p for p, _ in guide.named_parameters() if "steps" in p}  # the flow steps are trained parameters
