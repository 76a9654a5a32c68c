"""``ppl-vae compare --preset collapse``: the seeds' posterior-collapse experiment in one command.

{MLP decoder, PixelCNN decoder} x {N(0, I) prior, VampPrior, free bits, ACN prior}, each trained on
the same data, budget and seed. A factorised decoder needs the code to model the pixels jointly; a
PixelCNN does not, and the claim under test is that its VAE then ignores z (KL near 0, codes no better
than chance at k-NN) while the ACN prior keeps the code informative. Each row has the test log p(x)
(for ACN: its coding cost under the K-neighbour prior, not a log-likelihood), the KL (rate), active
units, the k-NN accuracy of the test codes and, for ACN, the ordered coding cost.
"""

from __future__ import annotations

from .compare import Variant

DECODERS = (("MLP", "factorized"), ("PixelCNN", "pixelcnn"))
# (row name, objective, prior)
PRIORS = (
    ("N(0,I)", "elbo", "normal"),
    ("VampPrior", "elbo", "vamp"),
    ("free bits 0.25/dim", "elbo:free_bits=0.25,free_bits_per=dim", "normal"),
    ("ACN", "elbo", "acn"),
)


def collapse_variants(spec: dict, pixelcnn: dict | None = None, acn: dict | None = None) -> list[Variant]:
    """The preset's eight variants from the base ``spec`` (a vae model with a one-layer guide);
    ``pixelcnn`` and ``acn`` size the PixelCNN decoder and the ACN prior of their rows."""
    if spec.get("model") != "vae":
        raise ValueError(f"--preset collapse trains the vae model with its decoders and priors, not --model {spec.get('model')}")
    base = {k: v for k, v in spec["model_kwargs"].items() if k not in ("decoder", "pixelcnn", "prior", "prior_kwargs")}
    out = []
    for decoder_name, decoder in DECODERS:
        for prior_name, objective, prior in PRIORS:
            kwargs = {**base, "prior": prior}
            if decoder == "pixelcnn":
                kwargs.update(decoder="pixelcnn", **({"pixelcnn": dict(pixelcnn)} if pixelcnn else {}))
            if prior == "acn" and acn:
                kwargs["prior_kwargs"] = dict(acn)
            out.append(Variant(f"{decoder_name} | {prior_name}", objective, {"model_kwargs": kwargs}))
    return out
