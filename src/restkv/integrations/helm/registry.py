"""HELM deployments of restkv models: :func:`register` one, :func:`register_embedded` the defaults."""

from __future__ import annotations

import functools

from helm.benchmark.model_deployment_registry import ClientSpec, ModelDeployment, register_model_deployment
from helm.benchmark.model_metadata_registry import (
    get_model_metadata,
    get_unknown_model_metadata,
    register_model_metadata,
)
from helm.benchmark.tokenizer_config_registry import TokenizerConfig, TokenizerSpec, register_tokenizer_config

from ...models import EMBEDDED
from .client import press_of

#: the ratios of the ReST-KV deployments registered for every embedded model
RATIOS = (0.25, 0.5, 0.75)
#: HELM's name of this package's models (``restkv/<model>``)
ORGANIZATION = "restkv"


def deployment_entry(
    name: str, model: str, method: str = "full", settings: dict | None = None, tokenizer_name: str | None = None
) -> dict:
    """The ``model_deployments.yaml`` entry of ``model`` under ``method`` (what :func:`register`
    registers), for users who keep their deployments in HELM's ``prod_env``; a model that is not
    embedded gets a ``max_sequence_length`` of 8192, to be set to its own."""
    return {
        "name": name,
        "model_name": name,
        "tokenizer_name": tokenizer_name or f"{ORGANIZATION}/{model}",
        "max_sequence_length": EMBEDDED[model].context if model in EMBEDDED else 8192,
        "client_spec": {
            "class_name": "restkv.integrations.helm.client.RestkvClient",
            "args": {"model": model, "method": method, "settings": dict(settings or {})},
        },
    }


def register(name: str, model: str, method: str = "full", settings: dict | None = None) -> None:
    """Register with HELM the deployment ``name``: ``model`` under ``method`` with ``settings``,
    with its tokenizer (``restkv/<model>``) and HELM's default metadata when the name has none."""
    press_of(method, settings)  # one sentence now rather than inside helm-run
    tokenizer = _register_tokenizer(model)
    entry = deployment_entry(name, model, method, settings, tokenizer)
    try:
        get_model_metadata(model_name=name)
    except ValueError:
        register_model_metadata(get_unknown_model_metadata(name))
    register_model_deployment(
        ModelDeployment(
            name=name,
            model_name=name,
            tokenizer_name=tokenizer,
            max_sequence_length=entry["max_sequence_length"],
            client_spec=ClientSpec(**entry["client_spec"]),
        )
    )


@functools.cache
def _register_tokenizer(model: str) -> str:
    """Register ``model``'s tokenizer as ``restkv/<model>`` once per process (HELM appends every
    registration to a list, so the deployments of one model share one entry); returns its name."""
    name = f"{ORGANIZATION}/{model}"
    spec = TokenizerSpec("restkv.integrations.helm.client.RestkvTokenizer", {"model": model})
    register_tokenizer_config(TokenizerConfig(name, spec))
    return name


def register_embedded() -> list[str]:
    """Register every embedded model, full and under ReST-KV at :data:`RATIOS`; returns the names."""
    names = []
    for model in EMBEDDED:
        names.append(f"{ORGANIZATION}/{model}")
        register(names[-1], model)
        for ratio in RATIOS:
            names.append(f"{ORGANIZATION}/{model}-restkv-{ratio}")
            register(names[-1], model, "restkv", {"compression_ratio": ratio})
    return names
