"""How many logical CPUs the served application's four deployments ask for, and a refusal in one sentence where the
Ray it starts on cannot place them (Serve would otherwise wait forever and log a warning every 30 s).

The ratio of the shares follows what a request costs each replica: the Embedder runs the forward passes, the Reranker
fewer and smaller ones, Search a faiss lookup, Api the HTTP parsing and decoding.
"""

from __future__ import annotations

from maple.section import SetupError

SHARES = {"Embedder": 0.5, "Reranker": 0.25, "Search": 0.125, "Api": 0.125}
DEFAULT_CPUS = 2.0  # what the four ask together unless serve.num_cpus says otherwise or the cluster has fewer


def serve_cpus(requested: float | None, cluster_cpus: float | None) -> float:
    """The CPUs the application asks for in total: `serve.num_cpus` when set, else DEFAULT_CPUS or the cluster's
    whole CPU count where that is smaller (a 1-core machine); `cluster_cpus` None: not connected to Ray yet."""
    if requested is not None:
        return requested
    return DEFAULT_CPUS if not cluster_cpus else min(DEFAULT_CPUS, cluster_cpus)


def cpu_shares(total: float) -> dict[str, float]:
    """Deployment name -> logical CPUs of its replica, adding up to `total`."""
    return {name: total * share for name, share in SHARES.items()}


def check_fits(total: float, free_cpus: float, cluster_cpus: float) -> None:
    """Refuse to deploy what cannot be placed: name what is asked, what is free, and the key that changes it."""
    if total <= free_cpus + 1e-9:
        return
    asked = ", ".join(f"{name} {cpus:g}" for name, cpus in cpu_shares(total).items())
    hint = (f"set serve.num_cpus={free_cpus:g} or lower" if free_cpus > 0 else
            "stop what holds them (other jobs, an earlier `maple serve`) or connect to a larger cluster")
    raise SetupError(f"the served application asks {total:g} logical CPUs ({asked}) but this Ray has "
                     f"{free_cpus:g} of {cluster_cpus:g} free: {hint} (serve.num_cpus splits across the four "
                     "deployments in these proportions)")
