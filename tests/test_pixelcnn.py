"""The PixelCNN decoder: the masks (pixel i never reads pixels >= i), an exact and normalised
log-likelihood equal to the sum of its per-pixel conditionals, sampling in raster order (the cropped
sampler equals the whole-image one, and its draws follow the model's own probabilities), and the
decoder inside the VAE: broadcasting over particles, objectives, the compiled step, log p(x)."""

import itertools

import pyro
import pytest
import torch
from test_step import BATCH, X_DIM, _data, assert_same_step

from ppl_vae import get_objective
from ppl_vae.evaluate import elbo_terms
from ppl_vae.importance_sampling import log_px
from ppl_vae.models.autoregressive import PixelCNNImages, PixelCNNLikelihood
from ppl_vae.models.likelihoods import Categorical256
from ppl_vae.pair import build_pair
from ppl_vae.pixelcnn import PixelCNN


def _net(levels=2, channels=6, layers=2, cond=0, seed=0):
    torch.manual_seed(seed)
    net = PixelCNN(levels, channels, layers, cond).double()
    with torch.no_grad():  # larger weights than the default: conditionals far from uniform
        for p in net.parameters():
            p.mul_(3.0)
    return net


def _all_binary_images(h, w):
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=h * w)), dtype=torch.float64)
    return grid.reshape(-1, 1, h, w)


def test_the_masks_make_each_output_read_only_earlier_pixels():
    net = _net(levels=2, layers=3, cond=0)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: net(v).reshape(-1), x).reshape(36, 36)
    later = torch.triu(torch.ones(36, 36, dtype=torch.bool))  # [i, j] with j >= i
    assert jac[later].abs().max() == 0
    assert (jac[~later] != 0).double().mean() > 0.5  # earlier pixels are read (the blind spot aside): not vacuous


def test_perturbing_later_pixels_leaves_earlier_log_probabilities_unchanged():
    net = _net(levels=256, layers=2, cond=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (1, 1, 9, 9), generator=gen).double() / 255
    cond = torch.randn(1, 2, 9, 9, generator=gen, dtype=torch.float64)
    before = net(x, cond).flatten(2)
    for i in (0, 17, 40, 80):
        y = x.clone().flatten()
        y[i:] = torch.randint(0, 256, (81 - i,), generator=gen).double() / 255
        after = net(y.reshape(x.shape), cond).flatten(2)
        assert torch.equal(after[..., : i + 1], before[..., : i + 1])


@pytest.mark.parametrize("levels", [2, 256])
def test_the_log_likelihood_is_the_sum_of_its_per_pixel_conditionals(levels):
    net = _net(levels=levels, layers=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, levels, (3, 1, 5, 5), generator=gen).double() / (levels - 1)
    total = torch.zeros(3, dtype=torch.float64)
    for i in range(25):  # p(x_i | x_<i) from an image whose pixels >= i are noise
        noisy = x.clone().flatten(1)
        noisy[:, i:] = torch.randint(0, levels, (3, 25 - i), generator=gen).double() / (levels - 1)
        logits = net(noisy.reshape(x.shape)).flatten(2)[..., i]
        xi = x.flatten(1)[:, i]
        if levels == 2:
            total += torch.distributions.Bernoulli(logits=logits[:, 0]).log_prob(xi)
        else:
            total += torch.log_softmax(logits, -1).gather(1, (xi * 255).round().long()[:, None])[:, 0]
    assert torch.allclose(net.log_prob(x), total, atol=1e-10)


def test_binary_probabilities_sum_to_one_over_every_image():
    net = _net(levels=2, layers=2)
    images = _all_binary_images(4, 4)  # 65,536
    with torch.no_grad():
        log_p = torch.cat([net.log_prob(chunk) for chunk in images.split(8192)])
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-9


def test_grey_level_probabilities_sum_to_one_over_every_image():
    net = _net(levels=256, layers=1)
    pairs = torch.tensor(list(itertools.product(range(256), repeat=2)), dtype=torch.float64) / 255
    log_p = net.log_prob(pairs.reshape(-1, 1, 1, 2))  # every 1x2 image
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-9


def _whole_image_sampler(net, shape, n, generator):
    """The reference: every pixel from a pass over the whole image, in raster order."""
    x = torch.zeros(n, 1, *shape, dtype=torch.float64)
    for r in range(shape[0]):
        for c in range(shape[1]):
            x[:, 0, r, c] = net._draw(net(x)[:, :, r, c], generator)
    return x


@pytest.mark.parametrize("levels", [2, 256])
def test_the_cropped_sampler_draws_what_the_whole_image_sampler_draws(levels):
    net = _net(levels=levels, layers=1)  # reach 4: a 12x12 image is cropped on every side
    assert net.reach == 4
    fast = net.sample((12, 12), 5, generator=torch.Generator().manual_seed(3))
    slow = _whole_image_sampler(net, (12, 12), 5, torch.Generator().manual_seed(3))
    assert torch.equal(fast, slow)


def test_samples_follow_the_models_own_probabilities_on_a_4x4_toy():
    """Drawn in the wrong order, pixels would be drawn from conditionals of the wrong pixels: the
    frequencies of each pixel and of the pairs (0, 1), (3, 4), (0, 15) are checked against the exact
    probabilities (enumerated), within 4.5 binomial SEs."""
    net = _net(levels=2, layers=2)
    images = _all_binary_images(4, 4).flatten(1)
    with torch.no_grad():
        p = torch.cat([net.log_prob(c.reshape(-1, 1, 4, 4)) for c in images.split(8192)]).exp()
    n = 20000
    draws = net.sample((4, 4), n, generator=torch.Generator().manual_seed(4)).flatten(1)
    events = [images[:, i] == 1 for i in range(16)]
    events += [(images[:, a] == 1) & (images[:, b] == 1) for a, b in ((0, 1), (3, 4), (0, 15))]
    observed = [draws[:, i] == 1 for i in range(16)]
    observed += [(draws[:, a] == 1) & (draws[:, b] == 1) for a, b in ((0, 1), (3, 4), (0, 15))]
    for exact_event, drawn in zip(events, observed):
        exact = float(p[exact_event].sum())
        se = (exact * (1 - exact) / n) ** 0.5
        assert abs(drawn.double().mean().item() - exact) < 4.5 * se + 1e-9
    assert any(0.1 < float(p[e].sum()) < 0.9 for e in events)  # not a degenerate toy


def test_the_distribution_broadcasts_over_particles_and_points():
    torch.manual_seed(0)
    lik = PixelCNNLikelihood(16, (4, 4), "bernoulli", channels=4, layers=1, cond_channels=2)
    cond = torch.randn(3, 5, 2 * 16)
    x = torch.bernoulli(torch.full((5, 16), 0.4))
    d = lik(cond)
    assert isinstance(d, PixelCNNImages) and d.batch_shape == (3, 5) and d.event_shape == (16,)
    lp = d.log_prob(x)
    one = lik(cond[1, 2]).log_prob(x[2])
    assert lp.shape == (3, 5) and torch.allclose(lp[1, 2], one)
    assert d.sample((2,)).shape == (2, 3, 5, 16)


def test_categorical256_is_normalised_and_its_mean_is_the_levels_expectation():
    torch.manual_seed(0)
    d = Categorical256(2)(torch.randn(4, 2 * 256))
    levels = torch.arange(256.0) / 255
    both = torch.stack(torch.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 2)
    assert torch.allclose(torch.logsumexp(d.log_prob(both), 0), torch.zeros(4), atol=1e-4)
    draws = d.sample((4000,))
    assert (draws.mean(0) - d.mean).abs().max() < 0.03  # sd of a level <= 0.5: 4.5 SE is 0.036


def _pixelcnn_vae(likelihood="bernoulli", **kw):
    pyro.set_rng_seed(0)
    spec = {
        "model": "vae",
        "guide": "mean_field",
        "model_kwargs": {"z_dim": 3, "hidden": (16,), "likelihood": likelihood, "decoder": "pixelcnn",
                         "pixelcnn": {"channels": 4, "layers": 1}, **kw},
        "guide_kwargs": {"z_dim": 3, "hidden": (16,)},
    }  # fmt: skip
    return build_pair(spec, X_DIM, image_shape=(8, 8))


@pytest.mark.parametrize("spec", ["elbo", "iwae:k=3", "dreg:k=2", "stl", "elbo:free_bits=0.5", "infovae:lam=10"])
def test_the_pixelcnn_decoder_compiles_to_the_eager_step(spec):
    assert_same_step(get_objective(spec), *_pixelcnn_vae(), _data())


def test_the_pixelcnn_decoder_with_the_acn_prior_compiles():
    model, guide = _pixelcnn_vae(prior="acn", prior_kwargs={"num_neighbours": 2})
    model.refresh(_data(40, seed=3))
    assert_same_step(get_objective("elbo"), model, guide, _data())


def test_log_px_of_a_pixelcnn_vae_lies_between_its_elbo_and_zero():
    model, guide = _pixelcnn_vae()
    x = _data()
    est = log_px(model, guide, x, k=50, seed=0)
    assert est.k == 50 and est.n == BATCH and est.log_px < 0
    assert elbo_terms(model, guide, x, k=20).elbo <= est.log_px + 3 * est.log_px_se


def test_grey_level_data_train_a_pixelcnn_vae():
    x = torch.randint(0, 256, (BATCH, X_DIM), generator=torch.Generator().manual_seed(0)).float() / 255
    assert_same_step(get_objective("elbo"), *_pixelcnn_vae("categorical256"), x)


def test_pixelcnn_decoder_refusals():
    with pytest.raises(ValueError, match="binary pixels .*not likelihood 'gaussian'"):
        _pixelcnn_vae("gaussian")
    with pytest.raises(ValueError, match="needs grey images"):
        build_pair({"model": "vae", "model_kwargs": {"decoder": "pixelcnn"}}, 64, image_shape=(64,))
    with pytest.raises(ValueError, match="needs grey images"):
        build_pair({"model": "vae", "model_kwargs": {"decoder": "pixelcnn"}}, 192, image_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="decoder='pixelcnn' too"):
        build_pair({"model": "vae", "model_kwargs": {"pixelcnn": {"layers": 2}}}, 64, image_shape=(8, 8))


@pytest.mark.parametrize("prior", ["normal", "acn"])
def test_pictures_of_a_pixelcnn_vae_are_draws_and_say_so(prior):
    """A PixelCNN has no closed-form mean: the grids hold binary draws and their titles say 'one draw'."""
    from ppl_vae import plots

    kwargs = {"prior": "acn", "prior_kwargs": {"num_neighbours": 2}} if prior == "acn" else {}
    model, guide = _pixelcnn_vae(**kwargs)
    x = _data()
    if prior == "acn":
        model.refresh(_data(40, seed=3))
    for images, drawn in (plots._samples(model, x, 6), plots._reconstruction(model, guide, x)):
        assert drawn and ((images == 0) | (images == 1)).all()
    factorised, mlp_guide = build_pair({"model": "vae", "model_kwargs": {"z_dim": 3, "hidden": (16,)}}, X_DIM)
    images, drawn = plots._samples(factorised, x, 6)
    assert not drawn and ((images > 0) & (images < 1)).any()
    assert plots._shown(True).startswith("one draw") and plots._shown(False).startswith("mean")
