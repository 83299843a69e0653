"""Rollout workers: every rollout of the project (offline evaluation of any text agent or LLM policy, validation during
training, teacher data, GRPO generation) played in this process or by Ray actors, with the same results.

    with RolloutPool(RolloutConfig(backend="ray", workers=2)) as pool:
        episodes = pool.play(stack, env, make_agent, users, "test", n_envs=64)
        trajectories = pool.trajectories(stack, env, policy, tasks, "train", Generation(temperature=1.0))

A call splits its tasks ((user, cut, seed) triples) into batches, in order, of at most `tasks_per_batch`, and fewer
when that gives every worker a share; each batch is played by one worker (`EpisodeWorker`) through a vector env of the
stack, and the results come back in task order. The local backend plays the same batches one after the other in this
process, so for the same weights a greedy rollout gives token for token the same trajectories on either backend.

With Ray, each worker is an actor holding a copy of the stack's env parts and of the agent or policy. The TRM is
served once per tool by a `RayRetriever` actor shared by all workers, and the sentence encoder the rewards use is
served by that same actor (`ServedEncoder`). What a worker needs (a stack's parts, an agent factory, a policy, its
weights) is put in Ray's object store once and fetched by a worker the first time a call names it; an LLM policy's
weights are put again whenever the caller's version changes (GRPO: every optimizer step). A worker that dies during a
batch (its process killed, its node lost) is replaced by a new actor and the batch runs again there; each batch's
result is kept once, so no trajectory is lost or duplicated. `report` holds the last call's tasks, batches, replaced
workers, tasks run again, wall time and the time workers spent playing (the rest is Ray's and the driver's overhead).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from agents.rollout import Generation, Trajectory, policy_trajectories, rollout
from deeprec_env.runtime import configure_threads, progress

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
Task = tuple[int, int | None, int]  # user, train cut point (None off the train split), sampling seed


@dataclass
class RolloutConfig:
    """Where rollouts run (`rollout.*` on the command line; `ray.*` says which Ray)."""

    backend: str = "local"  # local: this process | ray: Ray actors (`ray.address` joins a cluster)
    workers: int = 2  # rollout actors (backend=ray)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # > 0: each worker's policy generates on a GPU
    threads_per_worker: int = 1  # torch threads in each worker
    tasks_per_batch: int = 64  # at most this many episodes per request to one worker
    max_replacements: int = 8  # workers replaced within one call before it fails

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown rollout.backend {self.backend!r}; use one of {BACKENDS}")
        if self.workers < 1 or self.tasks_per_batch < 1:
            raise ValueError("rollout.workers and rollout.tasks_per_batch must be >= 1")


@dataclass
class StackParts:
    """What a worker rebuilds a stack from: its config and dataset, the retriever (a handle to the served TRM), the
    encoder (served too), the title matcher and the bound reward."""

    config: Any
    dataset: Any
    retriever: Any
    encoder: Any
    matcher: Any
    reward: Any


class EpisodeWorker:
    """Plays batches of tasks for a pool (the body of a Ray actor, or used directly by the local backend). Objects a
    call names by key (stack parts, agent factories, policies, weights) are fetched once and kept."""

    def __init__(self, remote: bool = False, threads: int | None = None, device: str = "cpu"):
        if threads is not None:
            configure_threads(threads)
        self.remote, self.device = remote, device
        self.objects: dict[Any, Any] = {}
        self.stacks: dict[Any, Any] = {}
        self.weights_version: dict[Any, Any] = {}

    def _fetch(self, key: Any, boxed: list) -> Any:
        """The object of `key`, kept from the first call that names it (`boxed`: [ObjectRef] in a Ray actor, fetched
        from the object store; [object] in the local backend)."""
        if key not in self.objects:
            if self.remote:
                import ray

                self.objects[key] = ray.get(boxed[0])
            else:
                self.objects[key] = boxed[0]
        return self.objects[key]

    def _stack(self, key: Any, boxed: list):
        if key not in self.stacks:
            from deeprec_env.stack import Stack

            parts: StackParts = self._fetch(key, boxed)
            self.stacks[key] = Stack(
                parts.config,
                parts.dataset,
                None,
                encoder=parts.encoder,
                retriever=parts.retriever,
                matcher=parts.matcher,
                reward=parts.reward,
            )
        return self.stacks[key]

    def _with_weights(self, key: Any, weights: tuple) -> None:
        """Load `weights` = (version, [state dict or None]) into the LLM policy of the object `key` (an `LLMPolicy`,
        or an agent factory with a `policy`) when its version changed."""
        version, boxed = weights
        if boxed[0] is None or self.weights_version.get(key) == version:
            return
        state = self._fetch(("weights", key, version), boxed)
        policy_model(self.objects[key]).load_state_dict(state)
        self.objects.pop(("weights", key, self.weights_version.get(key)), None)
        self.weights_version[key] = version

    def _setup(self, stack: tuple, env: dict, actor: tuple, weights: tuple, n_envs: int) -> tuple:
        """(stack, agent factory or policy, vector env) of a call: the objects it names, the policy's weights loaded
        and on this worker's device, and `n_envs` sub-envs of the stack's env with the `env` overrides."""
        stack = self._stack(*stack)
        value = self._fetch(*actor)
        self._with_weights(actor[0], weights)
        model = policy_model(value)
        if model is not None:
            model.to(self.device)
        return stack, value, stack.make_vector_env(n_envs, autoreset_mode="Disabled", **env)

    def play(
        self, stack: tuple, env: dict, agent: tuple, weights: tuple, tasks: Sequence[Task], split: str, n_envs: int
    ) -> list:
        """The episodes of the agent factory `agent` = (key, [factory]) on `tasks` (`agents.rollout.rollout`);
        `weights` = (version, [state dict or None]) for a factory's LLM policy."""
        stack, make_agent, envs = self._setup(stack, env, agent, weights, min(n_envs, len(tasks)))
        config = envs.config
        users, cuts = [t[0] for t in tasks], [t[1] for t in tasks]
        return rollout(
            envs, lambda: make_agent(stack.dataset, config.protocol, config.rec_k), users, split, False, cuts
        )

    def trajectories(
        self,
        stack: tuple,
        env: dict,
        policy: tuple,
        weights: tuple,
        tasks: Sequence[Task],
        split: str,
        n_envs: int,
        generation: Generation,
    ) -> list[Trajectory]:
        """The token trajectories of the LLM policy `policy` = (key, [LLMPolicy]) with `weights` on `tasks`
        (`agents.rollout.policy_trajectories`)."""
        _, llm, envs = self._setup(stack, env, policy, weights, min(n_envs, len(tasks)))
        return policy_trajectories(envs, llm, tasks, split, generation)

    def timed(self, method: str, *args: Any) -> tuple[float, Any]:
        """(seconds spent here, result) of one of the methods above: the pool's measure of work against overhead."""
        started = time.perf_counter()
        result = getattr(self, method)(*args)
        return time.perf_counter() - started, result

    def pid(self) -> int:
        return os.getpid()


class RolloutPool:
    """Rollouts on the configured backend (see the module docstring). Close it (or use it as a context manager) to
    stop its actors; Ray itself is started by `start_ray` and stopped by its caller."""

    def __init__(self, config: RolloutConfig | None = None):
        self.config = config or RolloutConfig()
        self.config.validate()
        self.report: dict[str, float] = {}
        self._keys = itertools.count()
        self._stacks: dict[int, tuple[Any, tuple]] = {}  # id(stack) -> (stack, (key, [parts]))
        self._retrievers: dict[int, Any] = {}  # id(in-process retriever) -> its RayRetriever
        self._shipped: dict[Any, tuple] = {}  # id(object) or (id, version) -> (object, (key, [ref]))
        self._actors: list[Any] = []
        self._local = EpisodeWorker() if self.config.backend == "local" else None

    # -- what workers need -----------------------------------------------------------------------------------------

    def _put(self, value: Any) -> list:
        if self._local is not None:
            return [value]
        import ray

        return [ray.put(value)]

    def _stack_ref(self, stack) -> tuple:
        if id(stack) not in self._stacks:
            retriever, encoder, reward = stack.retriever, stack.encoder, stack.reward
            if self._local is None:
                retriever = self._served(stack)
                encoder = retriever.served_encoder()
                if reward is not None:
                    reward = replace_encoder(reward, encoder)
            parts = StackParts(stack.config, stack.dataset, retriever, encoder, stack.matcher, reward)
            self._stacks[id(stack)] = (stack, (("stack", next(self._keys)), self._put(parts)))
        return self._stacks[id(stack)][1]

    def _served(self, stack):
        """The RayRetriever serving the stack's TRM and encoder (one per tool, shared by every stack using it)."""
        from deeprec_env.trm.retriever import RayRetriever

        local = stack.retriever
        if id(local) not in self._retrievers:
            self._retrievers[id(local)] = (
                local,
                RayRetriever.from_in_process(local, num_cpus=0, torch_threads=self.config.threads_per_worker),
            )
        return self._retrievers[id(local)][1]

    def _object_ref(self, value: Any, kind: str) -> tuple:
        if id(value) not in self._shipped:
            self._shipped[id(value)] = (value, ((kind, next(self._keys)), self._put(value)))
        return self._shipped[id(value)][1]

    # -- rollouts --------------------------------------------------------------------------------------------------

    def _weights_ref(self, value: Any, version: Any) -> tuple:
        """(version, [state dict]) of the LLM policy in `value` (an `LLMPolicy` or a factory with a `policy`) for Ray
        workers, put in the object store once per version; (None, [None]) when workers keep the copy they got."""
        if self._local is not None or version is None:
            return (None, [None])
        key = (id(value), "weights", version)
        if key not in self._shipped:
            for old in [k for k in self._shipped if isinstance(k, tuple) and k[:2] == (id(value), "weights")]:
                del self._shipped[old]
            model = policy_model(value)
            state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
            self._shipped[key] = (None, (version, self._put(state)))
        return self._shipped[key][1]

    def play(
        self,
        stack,
        env: dict,
        make_agent: Callable,
        users: Sequence[int],
        split: str,
        n_envs: int,
        cuts: Sequence[int] | None = None,
        show_progress: bool = False,
        version: Any = None,
    ) -> list:
        """One episode per user (at its train cut point in `cuts`, if given) on `split`, in the order of `users`.
        `make_agent(dataset, codec, rec_k)` builds an agent; Ray workers get a pickled copy once (close over plain
        values, or use a picklable class such as `agents.llm.LLMAgentFactory`). For a factory holding an LLM policy
        (`.policy`), a new `version` sends the policy's current weights to the workers."""
        tasks = tasks_of(users, cuts, 0)
        agent_ref = self._object_ref(make_agent, "agent")
        head = (self._stack_ref(stack), dict(env), agent_ref, self._weights_ref(make_agent, version))
        return self._run("play", head, tasks, (split, n_envs), show_progress)

    def trajectories(
        self,
        stack,
        env: dict,
        policy,
        tasks: Sequence[Task],
        split: str,
        n_envs: int,
        generation: Generation,
        version: Any = None,
    ) -> list[Trajectory]:
        """The token trajectories of an `LLMPolicy` on `tasks`, in task order; a new `version` sends the policy's
        current weights to the workers (GRPO: every optimizer step)."""
        head = (
            self._stack_ref(stack),
            dict(env),
            self._object_ref(policy, "policy"),
            self._weights_ref(policy, version),
        )
        return self._run("trajectories", head, list(tasks), (split, n_envs, generation), False)

    def _run(self, method: str, head: tuple, tasks: list, tail: tuple, show_progress: bool) -> list:
        size = min(self.config.tasks_per_batch, -(-len(tasks) // self.config.workers))  # every worker gets a share
        batches = [tasks[i : i + size] for i in range(0, len(tasks), max(size, 1))]
        self.report = {"tasks": len(tasks), "batches": len(batches), "workers_replaced": 0, "tasks_rerun": 0}
        results: list[tuple[float, list] | None] = [None] * len(batches)
        bar = progress(total=len(tasks), desc=f"rollouts ({self.config.backend})", disable=not show_progress)
        started = time.perf_counter()
        if self._local is not None:
            for index, batch in enumerate(batches):
                results[index] = self._local.timed(method, *head, batch, *tail)
                bar.update(len(batch))
        else:
            self._run_ray(method, head, batches, tail, results, bar)
        bar.close()
        self.report["wall_s"] = time.perf_counter() - started
        self.report["worker_s"] = sum(seconds for seconds, _ in results)  # time the workers spent playing
        return [item for _, batch in results for item in batch]

    def _run_ray(self, method: str, head: tuple, batches: list, tail: tuple, results: list, bar) -> None:
        import ray
        from ray.exceptions import RayActorError

        self._start_actors()
        waiting = list(range(len(batches)))
        running: dict[Any, tuple[int, int]] = {}  # future -> (batch, actor slot)

        def submit(slot: int) -> None:
            if waiting:
                index = waiting.pop(0)
                running[self._actors[slot].timed.remote(method, *head, batches[index], *tail)] = (index, slot)

        for slot in range(len(self._actors)):
            submit(slot)
        while running:
            (future,), _ = ray.wait(list(running), num_returns=1)
            index, slot = running.pop(future)
            try:
                results[index] = ray.get(future)
                bar.update(len(batches[index]))
            except RayActorError as err:
                if self.report["workers_replaced"] >= self.config.max_replacements:
                    raise RuntimeError(
                        f"{self.report['workers_replaced']} rollout workers died in one call (last: {err}); "
                        "check the workers' logs, or raise rollout.max_replacements"
                    ) from None
                log.warning("rollout worker %d died during a batch; replacing it and rerunning the batch", slot)
                self._actors[slot] = self._new_actor()
                self.report["workers_replaced"] += 1
                self.report["tasks_rerun"] += len(batches[index])
                waiting.insert(0, index)
            submit(slot)

    def _new_actor(self):
        import ray

        config = self.config
        actor = ray.remote(EpisodeWorker).options(
            num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker, max_restarts=0
        )
        return actor.remote(True, config.threads_per_worker, "cuda" if config.gpus_per_worker > 0 else "cpu")

    def _start_actors(self) -> None:
        if not self._actors:
            self._actors = [self._new_actor() for _ in range(self.config.workers)]

    def worker_pids(self) -> list[int]:
        """The process ids of the Ray workers (started if needed); [] for the local backend."""
        if self._local is not None:
            return []
        import ray

        self._start_actors()
        return ray.get([actor.pid.remote() for actor in self._actors])

    def close(self) -> None:
        """Stop the worker and retriever actors. Idempotent."""
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
        self._actors = []
        for _, served in self._retrievers.values():
            served.close()
        self._retrievers.clear()
        self._stacks.clear()
        self._shipped.clear()

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the Ray cluster at `address`, or start Ray on this machine (`num_cpus` logical CPUs, None: all) with its
    workers at normal priority: Ray nices its workers by default, which starves them of CPU whenever any other
    process runs beside them. Returns False when Ray was already initialised (nothing done), True otherwise."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


@contextmanager
def rollout_pool(config: RolloutConfig, address: str | None = None, num_cpus: int | None = None):
    """A `RolloutPool` for the duration of a `with` block: Ray is started (`start_ray`) when the backend needs it
    and it is not running yet, and shut down at the end if it was started here; the pool's actors always stop."""
    started = False
    if config.backend == "ray":
        started = start_ray(address, num_cpus)
    pool = RolloutPool(config)
    try:
        yield pool
    finally:
        pool.close()
        if started:
            import ray

            ray.shutdown()


def policy_model(value: Any):
    """The model of the LLM policy in `value` (an `LLMPolicy`, or an agent factory holding one as `.policy`), or None
    for agents without one."""
    return getattr(getattr(value, "policy", value), "model", None)


def tasks_of(users: Sequence[int], cuts: Sequence[int] | None, seed: int) -> list[Task]:
    """(user, cut, seed) tasks: each task's seed is `seed` plus its position."""
    cuts = [None] * len(users) if cuts is None else [int(c) for c in cuts]
    return [(int(u), c, seed + i) for i, (u, c) in enumerate(zip(users, cuts, strict=True))]


def replace_encoder(reward, encoder):
    """A bound reward (`deeprec_env.stack.BoundReward`) whose context, and judge, use `encoder`."""
    from deeprec_env.stack import BoundReward

    judge = reward.context.judge
    if judge is not None and hasattr(judge, "with_encoder"):
        judge = judge.with_encoder(encoder)
    return BoundReward(reward.reward, replace(reward.context, encoder=encoder, judge=judge), reward.config)
