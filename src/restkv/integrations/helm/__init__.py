"""HELM with a press: ``helm-run`` evaluates a model whose KV cache a restkv method compresses.

HELM (Stanford CRFM's ``crfm-helm``) finds this module through its plugin entry point (the
``helm`` group in restkv's ``pyproject.toml``), so once ``pip install 'restkv[helm]'`` has put
both in one environment, ``helm-run`` knows these model deployments without any flag:

* ``restkv/<model>``: an embedded model (``smollm2-135m-instruct``, ``gemma3-270m``) with the
  full cache;
* ``restkv/<model>-restkv-<ratio>``: the same model under ReST-KV (the paper's settings),
  removing ``ratio`` of each prompt's cache (0.25, 0.5, 0.75).

Any other model, method or setting is one entry in HELM's own ``prod_env/model_deployments.yaml``
(:func:`~restkv.integrations.helm.registry.deployment_entry` writes one; see
``docs/guides/evaluation.md``): the client is :class:`~restkv.integrations.helm.client.RestkvClient`,
its ``args`` a model (embedded name, folder or hub id), a method name and its settings
(``method: snapkv``, ``settings: {compression_ratio: 0.5}``).

Every request is one prompt, compressed at prefill by the press and answered greedily on the
compressed cache (:func:`restkv.generation.generate_with_stats`); HELM's stop sequences cut the
text afterwards. What a press cannot serve is refused with one sentence in HELM's failed-request
result: sampling (temperature above 0), several completions, echoed prompts and per-token
alternatives (language-modelling scenarios), embeddings. Like HELM's clients for APIs without
log-probabilities, completions carry log-probabilities of 0 (HELM's
``truncate_and_tokenize_response_text``), so metrics that read them do not apply.
"""

from .client import RestkvClient, RestkvTokenizer
from .registry import register, register_embedded

__all__ = ["RestkvClient", "RestkvTokenizer", "register", "register_embedded", "DEPLOYMENTS"]

#: HELM imports this package through its entry point: the default deployments register on import
DEPLOYMENTS = register_embedded()
