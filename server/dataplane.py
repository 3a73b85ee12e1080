"""DataPlane: the transport-agnostic operations that the gRPC servicer and the HTTP routes both call.

Each transport decodes its wire format into the arguments here, calls one method, and encodes
the result. Errors are TesseraError subclasses; transports map them through server/errors.py.
Every operation but the health checks takes the caller's `Credentials` and checks them first, here
and only here, so a refused request never reaches a model.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from . import __version__, observation
from ._generated import model_config_pb2 as mc
from .audit import AuditLog
from .auth import ANONYMOUS, Authorizer, Credentials, Principal, Scope
from .errors import (
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    TesseraError,
    Unauthenticated,
    Unsupported,
    note_route,
)
from .metrics import Metrics
from .model_statistics import ModelStatistics
from .names import MAX_NAME_CHARS, check_model_name
from .repository.manager import IndexEntry, ModelManager, ModelMetadata
from .routing import RolloutController, RolloutSpec, RolloutState, Router
from .tensors import InferRequest, InferResponse, Tensor
from .validation import prepare_inputs, select_outputs

__all__ = ["DataPlane", "InferenceObserver", "RepositoryAdmin", "ServerMetadata"]

T = TypeVar("T")

# Only what is really served: see README "Protocol extensions".
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository",
              "schedule_policy")


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class InferenceObserver(Protocol):
    """A side path fed after each successful inference (drift statistics).

    `observe` runs on the event loop on the request's path: implementations must only hand the
    arrays over (a bounded put_nowait) and return; they must never raise.
    """

    def observe(self, model: str, version: str, inputs: dict[str, Tensor],
                outputs: dict[str, Tensor]) -> None: ...


class RepositoryAdmin(Protocol):
    """Where repository load/unload go: the ModelManager, or FleetAdmin (every replica, explicit mode)."""

    async def load(self, name: str, *, config_json: str | None = None,
                   files: dict[str, bytes] | None = None) -> None: ...

    async def unload(self, name: str) -> None: ...


class DataPlane:
    """The one place both transports call."""

    def __init__(self, manager: ModelManager, metrics: Metrics, *, admin_enabled: bool = True,
                 rollouts: RolloutController | None = None, authorizer: Authorizer | None = None,
                 audit: AuditLog | None = None, metrics_auth: bool = False, replica: str = "local") -> None:
        self._manager = manager
        self._authorizer = authorizer or Authorizer()
        self._audit = audit
        self._metrics_auth = metrics_auth
        self._rollouts = rollouts
        self._router = Router(manager, rollouts) if rollouts is not None else None
        self._admin_enabled = admin_enabled
        self._metrics = metrics
        self._observers: list[InferenceObserver] = []
        self._drift_reports: Callable[[], dict[str, Any]] | None = None
        self._output_comparison: Callable[[str, int, int], dict[str, Any]] | None = None
        self._metadata = ServerMetadata("tessera", __version__, EXTENSIONS)
        self.accepting = True
        self._repository_admin: RepositoryAdmin = manager
        self._fleet_index: Callable[[], Awaitable[dict[str, list[IndexEntry]]]] | None = None
        self._replica = replica

    def set_fleet_admin(self, admin: RepositoryAdmin,
                        index: Callable[[], Awaitable[dict[str, list[IndexEntry]]]]) -> None:
        """Send load/unload to `admin` (every replica), and show the fleet's index from `index`."""
        self._repository_admin, self._fleet_index = admin, index

    @property
    def manager(self) -> ModelManager:
        return self._manager

    def add_observer(self, observer: InferenceObserver) -> None:
        self._observers.append(observer)

    def set_drift_reports(self, source: Callable[[], dict[str, Any]]) -> None:
        """Where the embedded drift monitor's latest reports come from (no Redis configured)."""
        self._drift_reports = source

    def set_output_comparison(self, source: Callable[[str, int, int], dict[str, Any]]) -> None:
        """What compares a rollout's candidate outputs with the stable's: (model, stable, candidate) -> figure."""
        self._output_comparison = source

    # -- the one check ---------------------------------------------------------------------------
    def authorize(self, creds: Credentials, scope: Scope, action: str, model: str | None = None) -> Principal:
        """The caller's principal, or Unauthenticated / PermissionDenied; a refusal is an audit line."""
        try:
            return self._authorizer.authorize(creds, scope, model)
        except (Unauthenticated, PermissionDenied) as exc:
            if self._audit is not None:
                self._audit.record("refused", (model or "")[:MAX_NAME_CHARS], identity=creds.describe(),
                                   source=creds.peer,
                                   action=action, outcome=exc.reason, reason=exc.message)
            raise

    def metrics_text(self, creds: Credentials = ANONYMOUS) -> bytes:
        """The Prometheus exposition; needs `read` only when the server was started with --metrics-auth."""
        if self._metrics_auth:
            self.authorize(creds, Scope.READ, "metrics")
        return self._metrics.render()

    def drift_reports(self, creds: Credentials = ANONYMOUS) -> dict[str, Any]:
        """Each model's latest drift report from the embedded monitor."""
        self.authorize(creds, Scope.READ, "drift_reports")
        if self._drift_reports is None:
            raise Unsupported("drift reports are served by the drift service (`tessera drift`) when Redis is "
                              "configured, and not at all when drift monitoring is off")
        return self._drift_reports()

    # -- health and metadata -------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.accepting and self._manager.all_ready()

    def server_metadata(self, creds: Credentials = ANONYMOUS) -> ServerMetadata:
        self.authorize(creds, Scope.READ, "server_metadata")
        return self._metadata

    def model_ready(self, name: str, version: str | None = None, creds: Credentials = ANONYMOUS) -> bool:
        self.authorize(creds, Scope.READ, "model_ready", check_model_name(name))
        return self._manager.is_ready(name, version or None)

    def model_metadata(self, name: str, version: str | None = None,
                       creds: Credentials = ANONYMOUS) -> ModelMetadata:
        self.authorize(creds, Scope.READ, "model_metadata", name)
        return self._manager.get(name, version or None).metadata

    def model_config(self, name: str, version: str | None = None,
                     creds: Credentials = ANONYMOUS) -> mc.ModelConfig:
        self.authorize(creds, Scope.READ, "model_config", name)
        return self._manager.get(name, version or None).spec.config

    # -- inference -----------------------------------------------------------------------------
    async def infer(self, request: InferRequest, creds: Credentials = ANONYMOUS,
                    principal: Principal | None = None,
                    observed: observation.RequestObservation | None = None) -> InferResponse:
        """Run one request through its model version's batcher, once `creds` may infer on its model.

        `principal` is what `authorize` already answered for this request's model, when the
        transport asked before reading the body (so a token is hashed once per request). `observed` is
        the request's observation, when the transport began one (it is traced, or payload logs are on).

        Raises Unauthenticated / PermissionDenied (before anything is counted), ModelNotFound /
        ModelNotReady / InvalidInput / Overloaded / DeadlineExceeded /
        ExecutionFailed; every failure after model resolution is counted against the model.
        """
        if observed is not None:
            observed.request_id, observed.model = request.id, request.model_name
        if principal is None:
            principal = self.authorize(creds, Scope.INFER, "infer", request.model_name)
        start = time.perf_counter_ns()
        if self._router is not None:
            route = self._router.route(request)
            model, rollout, arm = route.version, route.rollout, route.arm
        else:
            model, rollout, arm = self._manager.get(request.model_name, request.model_version or None), None, ""
        labels = model.labels
        version_metrics = self._metrics.for_version(labels)
        try:
            feeds, rows = prepare_inputs(model.spec, request)
            outputs, queue_ns, run = await model.batcher.submit(feeds, rows, request.timeout_us, observed)
            selected = select_outputs(model.spec, request, outputs)
        except Exception as exc:
            # The request log names where it failed. Several requests may share one error (a failed batch):
            # each transport reads it before anything else runs (no await between), so the last write is its own.
            note_route(exc, model.version, arm)
            if observed is not None:
                observed.routed(model.version, arm)
            elapsed = time.perf_counter_ns() - start
            model.stats.record_failure(elapsed)
            version_metrics.record_failure(exc)
            if rollout is not None and not isinstance(exc, InvalidInput):  # the client's mistakes are not evidence
                rollout.observe(arm, False, elapsed / 1e9)
            raise
        elapsed = time.perf_counter_ns() - start
        if observed is not None:  # before the observers: a payload record names the version it ran on
            observed.served(rows, model.version, arm)
        model.stats.record_success(rows, elapsed, queue_ns)
        version_metrics.record_success(elapsed)
        if rollout is not None:
            rollout.observe(arm, True, elapsed / 1e9, feeds, rows, outputs)
        for observer in self._observers:
            observer.observe(model.spec.name, model.version, feeds, outputs)
        return InferResponse(
            model_name=model.spec.name,
            model_version=model.version,
            outputs=selected,
            datatypes=model.output_datatypes,
            id=request.id,
            served=(rows, queue_ns, arm, principal.name, run),
        )

    # -- statistics and repository -------------------------------------------------------------
    def model_statistics(self, name: str = "", version: str = "",
                         creds: Credentials = ANONYMOUS) -> list[ModelStatistics]:
        """Statistics of every loaded version, or of one model (and version)."""
        self.authorize(creds, Scope.READ, "model_statistics", name or None)
        if not name:
            return [mv.stats for mv in self._manager.loaded_versions()]
        if not self._manager.has_model(check_model_name(name)):
            raise ModelNotFound(f"unknown model: '{name}'")
        found = [mv.stats for mv in self._manager.loaded_versions(name)
                 if not version or mv.stats.version == version]
        if version and not found:
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'")
        return found

    def repository_index(self, ready_only: bool = False, creds: Credentials = ANONYMOUS) -> list[IndexEntry]:
        self.authorize(creds, Scope.READ, "repository_index")
        return [e for e in self._manager.index() if not ready_only or e.state == "READY"]

    async def fleet_index(self, creds: Credentials = ANONYMOUS) -> dict[str, list[IndexEntry]]:
        """Each replica's repository index (replica name -> entries); outside a fleet (no Redis, or not
        explicit mode) the fleet is this replica alone."""
        self.authorize(creds, Scope.READ, "fleet_index")
        if self._fleet_index is None:
            return {self._replica: self._manager.index()}
        return await self._fleet_index()

    async def _admin(self, creds: Credentials, action: str, model: str,
                     operation: Callable[[str], Awaitable[T]]) -> T:
        """Check `admin`, run `operation(actor)` and write the audit line with its outcome."""
        principal = self.authorize(creds, Scope.ADMIN, action, model)
        outcome, reason = "ok", ""
        failure: BaseException | None = None
        try:
            if not self._admin_enabled:
                raise Unsupported("the admin API (repository load/unload, rollout control) is disabled on this "
                                  "server (start it with --allow-repository-admin true)")
            result = await operation(principal.name)
        except BaseException as exc:  # written to the audit trail below, then raised again
            failure = exc
            if isinstance(exc, TesseraError):
                outcome, reason = exc.reason, exc.message
            else:
                outcome, reason = ("error", "internal error") if isinstance(exc, Exception) else ("cancelled", "")
        # Not from a `finally`: compiled by mypyc, an await there lost the exception it was to raise again.
        if self._audit is not None:
            try:
                await self._audit.write("admin", model, actor=principal.name, reason=reason, action=action,
                                        identity=principal.name, source=creds.peer, outcome=outcome)
            except Exception as audit_failed:
                raise audit_failed from failure  # the operation's own failure stays on the record
        if failure is not None:
            raise failure
        return result

    async def load_model(self, name: str, config_json: str | None = None,
                         files: dict[str, bytes] | None = None, creds: Credentials = ANONYMOUS) -> None:
        await self._admin(creds, "load", check_model_name(name),
                          lambda actor: self._repository_admin.load(name, config_json=config_json, files=files or {}))

    async def unload_model(self, name: str, creds: Credentials = ANONYMOUS) -> None:
        await self._admin(creds, "unload", check_model_name(name), lambda actor: self._repository_admin.unload(name))

    # -- rollouts ------------------------------------------------------------------------------
    def _controller(self) -> RolloutController:
        if self._rollouts is None:
            raise Unsupported("rollouts are not enabled on this server")
        return self._rollouts

    async def start_rollout(self, name: str, spec: RolloutSpec, creds: Credentials = ANONYMOUS) -> RolloutState:
        return await self._admin(creds, "rollout_start", check_model_name(name),
                                 lambda actor: self._controller().start_rollout(name, spec, actor))

    def rollout_status(self, name: str, creds: Credentials = ANONYMOUS) -> RolloutState | None:
        self.authorize(creds, Scope.READ, "rollout_status", check_model_name(name))
        state = self._controller().status(name)
        if state is not None and state.active and self._output_comparison is not None:
            state.last_analysis["output_distribution"] = self._output_comparison(
                state.model, state.stable_version, state.candidate_version)
        return state

    async def promote_rollout(self, name: str, reason: str = "", creds: Credentials = ANONYMOUS) -> RolloutState:
        return await self._admin(creds, "rollout_promote", check_model_name(name),
                                 lambda actor: self._controller().promote(name, actor, reason or "manual promote"))

    async def abort_rollout(self, name: str, reason: str = "", creds: Credentials = ANONYMOUS) -> RolloutState:
        return await self._admin(creds, "rollout_abort", check_model_name(name),
                                 lambda actor: self._controller().abort(name, actor, reason or "manual abort"))
