"""The names the command line offers, kept free of torch and Pyro so that ``ppl-vae --help``
starts at once. Each tuple lists one registry's keys in its order; a test pins them to the
registries (``data.LOADERS``, ``models.MODELS`` ..., ``objectives.OBJECTIVES``)."""

DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "binarized-mnist")
BINARIZE_MODES = ("dynamic", "fixed", "none")
MODELS = ("vae", "hierarchical", "linear_gaussian")
GUIDES = ("mean_field", "full_cov", "hierarchical", "deterministic", "iaf", "planar", "radial", "householder", "hierarchical_iaf")
PRIORS = ("normal", "vamp", "flow", "acn")
LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")
OBJECTIVES = (
    "elbo", "meanfield", "iwae", "vr", "dreg", "stl", "jit_elbo", "jit_meanfield",
    "infovae", "mmd", "wae_mmd", "swae", "cwae", "sparse_ae",
)  # fmt: skip
