"""Running a search's trials on Ray Tune: embedded local Ray (`ray=True`) or an existing cluster
(`ray_address`). The only module of the project that imports Ray; `nas.search.runner` imports it only
when a run asks for Ray.

- `TuneSearcherAdapter` (a `ray.tune.search.Searcher`) wraps the run's `SearchSession`, i.e. OUR
  searcher and run directory. It lives in the driver process, so `suggest` asks our searcher and
  `on_trial_complete` tells it and writes trials.jsonl, searcher.json and best/ exactly as the
  in-process loop does. Candidates the precheck rejects (over budget, missing table entries)
  are recorded in `suggest` at once and never occupy a worker.
- `tune_trial` is the function trainable: it gets the architecture as JSON in its config (no
  pickled user objects), loads the dataset itself, trains with one `tune.report` per epoch (ASHA
  can stop it), reports the final `Result` as JSON, and saves weights.safetensors into its trial
  directory for the driver to copy into best/ (when the driver cannot read it, e.g. another node,
  the runner retrains the best architecture at the end instead).
- A worker that dies is retried by Tune (`FailureConfig(max_failures)`); a trial that still fails
  is recorded as failed, so the run ends with exactly `trials` finished trials.
- The embedded cluster listens on 127.0.0.1 only (`_loopback_only`) and requires a per-run token;
  a `ray_address` cluster keeps its own settings, and its network must be trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import ray
from ray import tune
from ray._private import ray_constants
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher as TuneSearcher

from nas.training.data import absolute_dataset, load_dataset
from nas.search.trial import Precheck, failure_reason, precheck, train_candidate
from nas.rundir.atomic import json_safe, write_atomically, write_json_atomic
from nas.rundir.model_files import weights_payload
from nas.strategies.base import Candidate, Result, SearchObjective
from nas.training.train import TrainConfig
from predictors.latency import LatencyPredictor

logger = logging.getLogger(__name__)

__all__ = ["TuneSearcherAdapter", "connect", "connected", "run_on_ray", "tune_trial"]

METRIC = "val_accuracy"
# Ray puts unix sockets under its temp dir; their paths must stay below ~107 bytes, and Ray adds
# about 65 (session_<date>_<pid>/sockets/plasma_store), so longer temp dirs go to /tmp instead.
MAX_TEMP_DIR_CHARS = 40
_CLUSTERS_ENABLED = ray_constants.ENABLE_RAY_CLUSTER  # as this process's environment set it


class TuneSearcherAdapter(TuneSearcher):
    def __init__(self, session: Any, table: LatencyPredictor, objective: SearchObjective) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.session = session
        self.table = table
        self.objective = objective
        self.running: dict[str, tuple[Candidate, Precheck]] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the search space is ours; Tune's param_space only carries the settings

    def suggest(self, trial_id: str) -> dict | str | None:
        session = self.session
        while True:
            if session.remaining - len(self.running) <= 0:
                # enough trials finished or in flight; Tune still waits for the running ones
                return TuneSearcher.FINISHED
            candidate = session.ask()
            checked = precheck(candidate, self.table, self.objective)
            if checked.verdict is not None:  # no training needed: record it here and ask again
                session.finish(candidate, checked.verdict, executor="ray-driver")
                continue
            self.running[trial_id] = (candidate, checked)
            return {"candidate": candidate.to_dict(), "precheck": checked.costs}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self.running.pop(trial_id, None)
        if entry is None:
            logger.warning("Tune reported trial %s, which this adapter did not suggest", trial_id)
            return
        candidate, checked = entry
        outcome = _result_from_report(result, error, checked)
        weights = (result or {}).get("weights_path") or None
        self.session.finish(candidate, outcome, weights_file=weights, executor="ray", executor_trial_id=trial_id)

    # Tune checkpoints its searcher for its own experiment resume; ours lives in searcher.json.
    def save(self, checkpoint_path: str) -> None:
        write_json_atomic(checkpoint_path, {"see": str(self.session.run_dir.searcher_path)})

    def restore(self, checkpoint_path: str) -> None:
        logger.info("Tune asked to restore its searcher; runs resume from searcher.json instead")


def _result_from_report(report: dict | None, error: bool, checked: Precheck) -> Result:
    known = checked.costs
    if report and report.get("trial_result"):
        return Result.from_dict(json.loads(report["trial_result"]))
    if error or not report:
        return Result(status="failed", reason="the Ray trial errored (its worker died or raised) after all retries",
                      **known)
    # stopped by the scheduler (ASHA) after `epoch` epochs: an ok trial on a shorter budget
    return Result(status="ok", accuracy=float(report[METRIC]), epochs=int(report.get("epoch", 0)),
                  train_time_s=report.get("elapsed_s"), extra={"stopped_by": "asha"}, **known)


def tune_trial(config: dict[str, Any]) -> None:
    """The function trainable; `config` is plain JSON (see `TuneSearcherAdapter.suggest`)."""
    import torch

    setup = config["setup"]
    torch.set_num_threads(max(1, int(setup["threads"])))
    candidate = Candidate.from_dict(config["candidate"])
    checked = Precheck(**config["precheck"])
    train_config = TrainConfig(**setup["train"])

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        # the last epoch is reported once, below, together with the trial's full result
        if epoch < train_config.epochs:
            tune.report({METRIC: metrics["val_accuracy"], "epoch": epoch, "train_loss": metrics["train_loss"],
                         "elapsed_s": metrics["elapsed_s"]})

    weights_path = ""
    try:
        data = load_dataset(setup["dataset"], setup["resolution"], seed=setup["seed"], limit=setup["train_limit"])
        result, model = train_candidate(candidate, checked, data=data, train_config=train_config, on_epoch=on_epoch)
        if model is not None:
            path = Path(tune.get_context().get_trial_dir()) / "weights.safetensors"
            # the same integrity data as local weights: the driver checks it before best/ takes them
            write_atomically(path, weights_payload(model.state_dict(), candidate.arch))
            weights_path = str(path)
    except Exception as error:  # data loading, saving: a failed trial, not a Tune retry loop
        logger.exception("trial %d failed", candidate.trial_id)
        result = Result(status="failed", reason=failure_reason(error), **checked.costs)
    tune.report({METRIC: result.accuracy if result.ok else 0.0, "epoch": result.epochs or 0,
                 "trial_result": json.dumps(json_safe(result.to_dict())), "weights_path": weights_path})


def _temp_dir(run_dir: Path) -> str:
    base = Path(os.environ["RAY_TMPDIR"]) if os.environ.get("RAY_TMPDIR") else run_dir / "ray_tmp"
    base = base.resolve()
    if len(str(base)) > MAX_TEMP_DIR_CHARS:
        short = tempfile.mkdtemp(prefix="hwnas-ray-")
        logger.info("Ray temp dir %s is too long for Ray's socket paths; using %s", base, short)
        return short
    base.mkdir(parents=True, exist_ok=True)
    return str(base)


# Variables Ray reads or sets in os.environ during `ray.init`; restored after the search so a
# library caller's process is left as it was.
_RAY_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
LOOPBACK = "127.0.0.1"


def _loopback_only(enabled: bool) -> None:
    """Make the embedded cluster's node IP 127.0.0.1, so that everything it starts listens on
    loopback only (issue #19). Ray binds its gRPC servers (GCS, raylet, object manager, workers,
    the driver) and its agents to every interface unless the node IP is exactly 127.0.0.1, and
    `ray.init` turns an explicit `_node_ip_address="127.0.0.1"` back into the routable address
    (`services.resolve_ip_for_localhost`) unless Ray clusters are switched off, as Ray does on
    Windows and macOS. So switch them off while the embedded cluster runs: the module constant
    for this process (read at each call), the variable it comes from for the processes Ray
    starts. Private API, as Ray itself uses it; `enabled=False` restores the constant."""
    ray_constants.ENABLE_RAY_CLUSTER = _CLUSTERS_ENABLED and not enabled
    if enabled:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def _reset_token_cache() -> None:
    """Ray caches the auth mode and token per process (read from the environment); re-read them
    when we change the environment, so a later search in the same process (e.g. on another
    cluster) does not inherit this one's. Best effort: Ray's private API, as Ray itself uses it."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def connect(config: Any, run_dir: Path) -> None:
    """Start embedded local Ray (listening on 127.0.0.1 only), or attach to the cluster at
    `config.ray_address` (whose network must be trusted: Ray runs whatever its clients send)."""
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; shut it down before a search")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = not logger.isEnabledFor(logging.DEBUG)
    if config.ray_address:
        # the cluster's own authentication settings (RAY_AUTH_* or ~/.ray) apply, as for `ray` itself
        logger.info("connecting to the Ray cluster at %s", config.ray_address)
        ray.init(address=config.ray_address, log_to_driver=not quiet, configure_logging=False)
        return
    has_token = any(name in os.environ for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) \
        or (Path.home() / ".ray" / "auth_token").is_file()
    if not has_token and os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
        # Ray 2.60 protects a new local cluster with a token that it would otherwise generate into
        # ~/.ray/auth_token. A per-run token in the environment (inherited by the workers) keeps
        # the protection and leaves the user's home alone; Ray itself then switches token mode on.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        _reset_token_cache()
    cpus = max(1, int(round(config.workers * config.cpus_per_trial + 0.4999)))
    _loopback_only(True)
    # address="local": always a fresh private instance, never a stray cluster found via `auto`
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _temp_dir=_temp_dir(run_dir),
             _node_ip_address=LOOPBACK, log_to_driver=not quiet, configure_logging=False,
             object_store_memory=128 * 1024**2)


@contextlib.contextmanager
def connected(config: Any, run_dir: Path) -> Iterator[None]:
    """Ray connected for the block (`connect`), then shut down, leaving this process's
    environment and Ray's process-wide settings as they were."""
    if ray.is_initialized():  # before the try: someone else's Ray is not ours to shut down
        raise RuntimeError("Ray is already initialised in this process; shut it down before a search")
    saved_env = {name: os.environ.get(name) for name in _RAY_ENV}
    try:
        connect(config, run_dir)
        yield
    finally:
        ray.shutdown()
        _loopback_only(False)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reset_token_cache()


def run_on_ray(config: Any, session: Any, table: LatencyPredictor, objective: SearchObjective) -> None:
    run_dir = session.run_dir.path
    adapter = TuneSearcherAdapter(session, table, objective)
    setup = {
        # Tune runs trainables in their own working directories: a relative PATH would not resolve
        "dataset": absolute_dataset(config.dataset), "resolution": config.resolution, "seed": config.seed,
        "train_limit": config.train_limit, "train": config.to_dict()["train"],
        "threads": max(1, int(config.cpus_per_trial)),
    }
    scheduler = (ASHAScheduler(metric=METRIC, mode="max", grace_period=1, max_t=config.train.epochs)
                 if config.asha else None)
    trainable = tune.with_resources(tune_trial, {"cpu": config.cpus_per_trial})
    try:
        with connected(config, run_dir):
            tuner = tune.Tuner(
                trainable,
                param_space={"setup": setup},
                tune_config=tune.TuneConfig(search_alg=adapter, scheduler=scheduler, num_samples=-1,
                                            max_concurrent_trials=config.workers),
                run_config=tune.RunConfig(
                    name=time.strftime("tune-%Y%m%d-%H%M%S"),
                    storage_path=str((run_dir / "ray_results").resolve()),
                    failure_config=tune.FailureConfig(max_failures=config.max_failures),
                    verbose=0,
                ),
            )
            tuner.fit()
    except KeyboardInterrupt:
        logger.warning("interrupted; %d of %d trials finished. Resume with --resume %s",
                       session.finished, session.trials, run_dir)
        raise
    if session.remaining > 0:
        logger.warning("Tune stopped with %d of %d trials finished (interrupted?); resume with --resume %s",
                       session.finished, session.trials, run_dir)
