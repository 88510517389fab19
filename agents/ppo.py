"""ContinualPPO: Stable-Baselines3's PPO set up for continual reinforcement learning."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer, RolloutBufferSamples
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from nested_ac.agents import by_hand
from nested_ac.agents.by_hand import HandGradient
from nested_ac.agents.policy import ContinualActorCriticPolicy, call
from nested_ac.errors import unknown_choice
from nested_ac.faults import check_gradients, check_losses, check_update
from nested_ac.hooks import Entries, Tool
from nested_ac.networks import Network, policy_networks
from nested_ac.optim import FlatAdam, with_element_steps

# PPO's loss terms, as logged under train/ and checked for NaN (see nested_ac/faults.py).
LOSS_TERMS = ("policy_gradient_loss", "value_loss", "entropy_loss")
# The update's statistics by name (loss terms, clip fraction …), one detached tensor per minibatch.
LossStats = dict[str, list[torch.Tensor]]

# ``ppo.engine``: "fast" computes the same update with less framework overhead (equal to float rounding);
# "sb3" is Stable-Baselines3's PPO number for number.
ENGINES = ("fast", "sb3")

# Optimizers with a fused kernel that the fast engine switches on (other optimizers step as they are; where
# FlatAdam cannot take a step, it takes torch's fused one).
FUSED_OPTIMIZERS = (FlatAdam, torch.optim.AdamW)

OptimizerClass = type[torch.optim.Optimizer]

# ``ppo.normalize_advantage_over``: where advantages are normalised (with ``normalize_advantage``).
ADVANTAGE_SCOPES = ("minibatch", "batch")


def engine_optimizer(engine: str, optimizer_class: OptimizerClass) -> OptimizerClass:
    """The class ``engine`` steps ``optimizer_class`` with: Adam as :class:`~nested_ac.optim.FlatAdam` on the
    fast engine and as ``torch.optim.Adam`` on ``sb3`` (SB3's numbers); any other optimizer as it is."""
    if optimizer_class in (torch.optim.Adam, FlatAdam):
        return FlatAdam if engine == "fast" else torch.optim.Adam
    return optimizer_class


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """``g ← g·min(1, c / (‖g‖₂ + 1e-6))`` over all gradients together; returns ``‖g‖₂`` before clipping.
    ``max_norm`` None: the norm alone, the gradients left as they are (no clipping).

    The same kernels, in the same order, as ``torch.nn.utils.clip_grad_norm_`` on CPU (so the same
    numbers), without its per-call grouping of tensors by device and dtype.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:  # e.g. an outer critic moved only by Polyak steps
        return torch.tensor(0.0)
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm is not None:
        torch._foreach_mul_(grads, _clip_factor(total_norm, max_norm))
    return total_norm


def clip_flat_grad_norm(flat_grad: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """:func:`clip_grad_norm` for gradients that are all views of one flat tensor, on that tensor."""
    total_norm = torch.linalg.vector_norm(flat_grad)
    if max_norm is not None:
        flat_grad.mul_(_clip_factor(total_norm, max_norm))
    return total_norm


def _clip_factor(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, c / (‖g‖₂ + 1e-6)), as ``torch.nn.utils.clip_grad_norm_`` computes it."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def normalize_advantages(buffer: RolloutBuffer) -> None:
    """Â = (A − mean A) / std A over every advantage of ``buffer`` at once, in place (std: the unbiased
    sample standard deviation; where it is 0 or not finite, the advantages are only centred): Dohare et al.'s
    PPO normalises the whole batch so, before the epochs, where SB3 normalises each minibatch."""
    advantages = torch.as_tensor(buffer.advantages)  # shares the buffer's memory
    advantages -= advantages.mean()
    std = advantages.std()
    if std > 0 and torch.isfinite(std):
        advantages /= std


class ContinualPPO(PPO):
    """Proximal Policy Optimization (Schulman et al., 2017) for continual RL, on Stable-Baselines3.

    Maximises the clipped surrogate ``E[min(r_t(θ) Â_t, clip(r_t(θ), 1-ε, 1+ε) Â_t)]`` with
    ``r_t(θ) = π_θ(a_t|s_t) / π_θ_old(a_t|s_t)`` and GAE(λ) advantages, plus ``c_v · (V(s) - R̂)²`` and an
    entropy bonus — SB3's PPO unchanged. What it adds is the continual-learning default network
    (separate actor and critic MLPs, 64×64 ReLU, as in the loss-of-plasticity literature) and the hooks of
    :class:`~nested_ac.hooks.Tool`: each tool in ``tools`` runs on the loss's gradients
    before they are clipped (a loss term of its own), on the clipped gradients before every optimizer step,
    after every optimizer step, at every task switch, after every rollout, and logs after every update;
    :meth:`trainable_networks` tells tools which networks they may change.
    A NaN or inf in a loss, a gradient or a parameter stops the update with
    :class:`~nested_ac.faults.NumericalFault`. Like SB3's algorithms it takes plain keyword arguments
    (``nested_ac.build`` translates a run configuration into them).

    Beyond SB3's settings: ``normalize_advantage_over="batch"`` normalises the advantages once over the
    whole rollout (:func:`normalize_advantages`) instead of in each minibatch, and ``max_grad_norm=None``
    leaves the gradients unclipped (their norm is still logged and checked) — both as in Dohare et al.'s
    PPO (Nature 2024).

    ``engine="sb3"`` is SB3's PPO number for number. ``engine="fast"`` (the default) computes the same
    update with less overhead: the policy's log-density and entropy by formula
    (:class:`~nested_ac.agents.policy.ContinualActorCriticPolicy`, in the rollout and the update); the
    gradient written by hand wherever that is exactly autograd's (:mod:`nested_ac.agents.by_hand` decides
    at each update, and the run's log says once which path it takes and why: the TensorBoard text
    ``engine/gradient``) — ``_loss(by_hand=True)`` gives the loss's derivatives with respect to log π, H
    and V per sample and :class:`~nested_ac.agents.by_hand.HandGradient` takes them back through the
    networks into one flat gradient tensor, clipped on that tensor; and torch's Adam stepped on flat tensors
    (:class:`~nested_ac.optim.FlatAdam`) or its fused AdamW kernel. The two agree to float rounding. Both
    engines share the rest: minibatches indexed from tensors made once per update (SB3's permutation and
    values), loss statistics kept as tensors and read once per update, and foreach gradient clipping.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **PPO.policy_aliases,
        "MlpPolicy": ContinualActorCriticPolicy,
    }

    def __init__(
        self,
        policy: Any,
        env: Any,
        tools: Sequence[Tool] = (),
        engine: str = "fast",
        normalize_advantage_over: str = "minibatch",
        **kwargs: Any,
    ) -> None:
        if engine not in ENGINES:
            raise unknown_choice("ppo.engine", engine, ENGINES)
        if normalize_advantage_over not in ADVANTAGE_SCOPES:
            raise unknown_choice("ppo.normalize_advantage_over", normalize_advantage_over, ADVANTAGE_SCOPES)
        self.engine = engine
        self.normalize_advantage_over = normalize_advantage_over
        policy_kwargs = kwargs.pop("policy_kwargs", None) or {
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.ReLU,
        }
        policy_class = self._get_policy_from_name(policy) if isinstance(policy, str) else policy
        if issubclass(policy_class, ContinualActorCriticPolicy):
            policy_kwargs = {**policy_kwargs, "direct": engine == "fast"}
        self.tools = list(tools)
        self._grad_norms: list[torch.Tensor] = []
        self._networks: tuple[BasePolicy, dict[str, Network]] | None = None  # see trainable_networks
        self._hand: HandGradient | None = None  # this update's hand-written gradient (None: autograd's)
        self._gradient_path = ""  # the path the log last named (see _choose_gradient)
        self.in_minibatch_forward = False  # see minibatch_forward
        self._loss_derivatives: tuple[Any, ...] = ()  # see _loss(by_hand=True)
        super().__init__(policy, env, policy_kwargs=policy_kwargs, **kwargs)

    def _setup_model(self) -> None:
        """SB3's set-up, with the optimizer the engine steps (:func:`engine_optimizer`) and, where a tool
        resets units, one step count per weight (:func:`~nested_ac.optim.with_element_steps`: a restarted
        weight restarts its bias correction, as Dohare et al. 2024 do)."""
        kwargs = self.policy_kwargs
        optimizer_class = kwargs.get("optimizer_class", torch.optim.Adam)
        optimizer_kwargs = kwargs.get("optimizer_kwargs")
        if optimizer_kwargs is None and optimizer_class in (torch.optim.Adam, FlatAdam):
            optimizer_kwargs = {"eps": 1e-5}  # what SB3 gives its Adam by default
        if any(tool.restarts_entry_state for tool in self.tools):
            optimizer_class, optimizer_kwargs = with_element_steps((optimizer_class, optimizer_kwargs or {}))
        optimizer_class = engine_optimizer(self.engine, optimizer_class)
        if optimizer_kwargs is not None:
            kwargs = {**kwargs, "optimizer_kwargs": optimizer_kwargs}
        self.policy_kwargs = {**kwargs, "optimizer_class": optimizer_class}
        super()._setup_model()
        optimizer = self.policy.optimizer
        if self.engine == "fast" and type(optimizer) in FUSED_OPTIMIZERS:
            for group in optimizer.param_groups:
                group["fused"], group["foreach"] = True, False
        optimizer.register_step_post_hook(self._after_optimizer_step)

    def trainable_networks(self) -> dict[str, Network]:
        """The networks plasticity tools may change now, by name: the actor and the critic
        (:func:`~nested_ac.networks.policy_networks`); parameters outside them, such as a Gaussian policy's
        ``log_std``, are not part of any. Worked out once per policy object (tools ask after every step)."""
        cached = self._networks
        if cached is None or cached[0] is not self.policy:
            cached = self._networks = (
                self.policy,
                {network.name: network for network in policy_networks(self.policy)},
            )
        return dict(cached[1])

    def networks_changed(self) -> None:
        """A tool has just changed the networks' layers (plasticity injection): :meth:`trainable_networks`
        works them out anew."""
        self._networks = None

    @contextlib.contextmanager
    def minibatch_forward(self) -> Iterator[None]:
        """The scope of the update's own forward pass on a minibatch (:meth:`_loss`), the one whose
        activations tools observe (:attr:`in_minibatch_forward`: continual backprop scores units on it). A
        tool's own forward passes — gradient projection's memory batch, SPG's and NCL's consolidation —
        and the rollouts run outside it, so no tool sees another's batches."""
        self.in_minibatch_forward = True
        try:
            yield
        finally:
            self.in_minibatch_forward = False

    def _before_optimizer_step(self) -> None:
        """Hand the clipped gradients to every tool's ``before_optimizer_step`` (masking, projection …)."""
        for tool in self.tools:
            tool.before_optimizer_step(self, self.policy.optimizer)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Every tool's ``adjust_update`` on the optimizer's update alone, then every tool's
        ``after_optimizer_step``."""
        for tool in self.tools:
            tool.adjust_update(self, optimizer)
        for tool in self.tools:
            tool.after_optimizer_step(self, optimizer)

    def notify_reinitialised(self, entries: Entries, origin: Tool) -> None:
        """Tell every tool but ``origin`` that ``origin`` has just reinitialised ``entries``."""
        for tool in self.tools:
            if tool is not origin:
                tool.on_reinitialise(self, entries)

    def notify_task_switch(self, task: int) -> None:
        """Tell every tool that the environment's task is now ``task`` (called by the task clock)."""
        for tool in self.tools:
            tool.on_task_switch(self, self.policy.optimizer, task)

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        collect = (
            self._collect_rollouts if self.engine == "fast" and not self.use_sde else super().collect_rollouts
        )
        collected = collect(env, callback, rollout_buffer, n_rollout_steps)
        for tool in self.tools:
            tool.on_rollout_end(self)
        return collected

    def _collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's ``collect_rollouts`` (without gSDE), step for step and number for number, with less work
        per step: the policy runs under ``torch.inference_mode`` and through :func:`call`, and only the
        copies that finished are searched for a time limit to bootstrap (``r ← r + γ V(s_T)``)."""
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        while n_steps < n_rollout_steps:
            with torch.inference_mode():
                actions, values, log_probs = call(self.policy, obs_as_tensor(self._last_obs, self.device))
            actions = actions.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            for idx in np.flatnonzero(dones):
                info = infos[idx]
                if info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                    terminal_obs = self.policy.obs_to_tensor(info["terminal_observation"])[0]
                    with torch.no_grad():
                        terminal_value = self.policy.predict_values(terminal_obs)[0]
                    rewards[idx] += self.gamma * terminal_value
            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones
        with torch.inference_mode():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def train(self) -> None:
        self._update()
        check_update(self)
        for tool in self.tools:
            tool.log(self.logger)

    def _minibatches(self) -> Iterator[Iterator[RolloutBufferSamples]]:
        """Per epoch, the rollout buffer's minibatches as ``RolloutBuffer.get(batch_size)`` yields them (the
        same permutation, drawn from numpy's global generator, and the same values), but sliced from
        tensors made once per update and shuffled once per epoch. Other buffers use their own ``get``."""
        buffer = self.rollout_buffer
        if type(buffer) is not RolloutBuffer:
            for _ in range(self.n_epochs):
                yield buffer.get(self.batch_size)
            return

        def flat(array: np.ndarray) -> torch.Tensor:  # (steps, envs, ...) -> (envs·steps, ...), as SB3
            return torch.as_tensor(array.swapaxes(0, 1).reshape(-1, *array.shape[2:]), device=self.device)

        data = [
            flat(buffer.observations),
            flat(buffer.actions.astype(np.float32, copy=False)),
            *(flat(array).flatten() for array in (buffer.values, buffer.log_probs)),
            *(flat(array).flatten() for array in (buffer.advantages, buffer.returns)),
        ]
        size = len(data[0])
        for _ in range(self.n_epochs):
            order = torch.as_tensor(np.random.permutation(size), device=self.device)
            shuffled = [tensor[order] for tensor in data]
            yield (
                RolloutBufferSamples(*(tensor[start : start + self.batch_size] for tensor in shuffled))
                for start in range(0, size, self.batch_size)
            )

    def _update(self) -> None:
        """One PPO update on the rollout buffer: SB3's ``PPO.train``, step for step.

        It is written out as a loop over :meth:`_loss` (the minibatch loss) and :meth:`_optimizer_step` so
        that subclasses add terms to the loss or work after each step without a second copy of PPO. Loss
        statistics stay tensors until the end of the update (one read, not one per minibatch).
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        progress = self._current_progress_remaining
        clip_range = self.clip_range(progress)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(progress)
        stats: LossStats = defaultdict(list)
        self._grad_norms.clear()
        if self.normalize_advantage and self.normalize_advantage_over == "batch":
            normalize_advantages(self.rollout_buffer)
        self._hand = self._choose_gradient()
        by_hand = {"by_hand": True} if self._hand is not None else {}  # a subclass's _loss may not take it
        continue_training = True
        for epoch, minibatches in enumerate(self._minibatches()):
            approx_kl_divs = []
            for batch in minibatches:
                with self.minibatch_forward():
                    loss, _, approx_kl_div = self._loss(batch, clip_range, clip_range_vf, stats, **by_hand)
                approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and (kl := approx_kl_div.item()) > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {kl:.2f}")
                    break
                self._optimizer_step(loss, {name: values[-1] for name, values in stats.items()})
            self._n_updates += 1
            if not continue_training:
                break

        means = {name: float(np.mean(torch.stack(values).tolist())) for name, values in stats.items()}
        check_losses(means, self.num_timesteps)  # a NaN loss term that left the gradient finite
        for name, mean in means.items():
            self.logger.record(name if "/" in name else f"train/{name}", mean)
        buffer = self.rollout_buffer
        self.logger.record("train/approx_kl", np.mean(torch.stack(approx_kl_divs).tolist()))
        self.logger.record("train/loss", loss.item())
        self.logger.record(
            "train/explained_variance", explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        )
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self._grad_norms:  # the gradient norm before clipping, mean over the update's steps
            self.logger.record("train/grad_norm", torch.stack(self._grad_norms).mean().item())
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _loss(
        self,
        batch: RolloutBufferSamples,
        clip_range: float,
        clip_range_vf: float | None,
        stats: LossStats,
        by_hand: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PPO's minibatch loss ``-L_clip + c_e·L_entropy + c_v·E[(V(s) - R̂)²]``, computed as SB3 does.

        Returns the loss, the critic's predictions ``V(s)`` on the minibatch (with their graph) and the
        approximate KL divergence; appends the loss terms (detached tensors) to ``stats``. ``by_hand``
        (the update's own call, where the gradient is written by hand): no graph; instead the loss's
        derivatives per sample with respect to log π, H and V are kept for :meth:`HandGradient.backward`.
        """
        actions = batch.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = batch.actions.long().flatten()
        evaluate = self._hand.evaluate_actions if by_hand else self.policy.evaluate_actions
        values, log_prob, entropy = evaluate(batch.observations, actions)
        values = values.flatten()
        advantages = batch.advantages
        if self.normalize_advantage and self.normalize_advantage_over == "minibatch" and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        log_ratio = log_prob - batch.old_log_prob
        ratio = torch.exp(log_ratio)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()

        values_pred = values
        if clip_range_vf is not None:
            values_pred = batch.old_values + torch.clamp(
                values - batch.old_values, -clip_range_vf, clip_range_vf
            )
        value_loss = torch.nn.functional.mse_loss(batch.returns, values_pred)

        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

        with torch.no_grad():
            for name, value in zip(LOSS_TERMS, (policy_loss, value_loss, entropy_loss), strict=True):
                stats[name].append(value.detach())
            stats["clip_fraction"].append(torch.mean((torch.abs(ratio - 1) > clip_range).float()))
            approx_kl_div = torch.mean((ratio - 1) - log_ratio)  # ratio = exp(log_ratio), as SB3 computes it
            if by_hand:
                n = len(values)
                unclipped = policy_loss_1 <= policy_loss_2  # where min() takes Â r (its ∂/∂log π: Â r)
                in_range = 1.0
                if clip_range_vf is not None:
                    in_range = (values - batch.old_values).abs() <= clip_range_vf
                self._loss_derivatives = (  # ∂loss/∂log π, ∂loss/∂H, ∂loss/∂V, and further critics' (none)
                    unclipped * policy_loss_1 * (-1 / n),
                    torch.full_like(values, -self.ent_coef / n),
                    (values_pred - batch.returns) * in_range * (2 * self.vf_coef / n),
                    {},
                )
        return loss, values, approx_kl_div

    def _optimizer_step(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Back-propagate ``loss``, add the tools' loss terms' gradients (``before_gradient_clipping``), clip
        the gradient norm to ``max_grad_norm`` and step the optimizer.

        Between clipping and ``optimizer.step()`` is the one place where the gradient is final: the fault
        check runs there (``losses``, this minibatch's loss terms, name a non-finite loss first).
        """
        if self._hand is not None:
            self._hand.backward(*self._loss_derivatives)
        else:
            self.policy.optimizer.zero_grad()
            loss.backward()
        for tool in self.tools:  # loss terms of tools (Parseval, C-CHAIN): clipped with the loss's
            tool.before_gradient_clipping(self, self.policy.optimizer)
        total_norm = self._clip_gradients()
        check_gradients(self, total_norm, losses)
        self._grad_norms.append(total_norm)
        self._before_optimizer_step()
        self.policy.optimizer.step()

    def _choose_gradient(self) -> HandGradient | None:
        """This update's hand-written gradient, or None where it must be autograd's
        (:func:`~nested_ac.agents.by_hand.refusal`); logs the path taken, and why, when it changes (the text
        ``engine/gradient``: once per run unless something, e.g. a hook, changes it)."""
        reason = by_hand.refusal(self)
        path = (
            "written by hand (autograd's gradient: every rule of nested_ac.agents.by_hand holds)"
            if reason is None
            else f"autograd: {reason}"
        )
        if path != self._gradient_path:
            self._gradient_path = path
            self.logger.record("engine/gradient", path, exclude=("stdout", "log", "json", "csv"))
        if reason is not None:
            return None
        hand = self._hand
        return hand if hand is not None and hand.holds(self.policy) else HandGradient(self.policy)

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradient norm to ``max_grad_norm`` (None: no clipping); returns the norm before clipping
        (no sync).

        The optimizer holds every policy parameter in ``policy.parameters()``'s order (SB3 builds it so)."""
        if self._hand is not None:  # every gradient is a view of one flat tensor
            return clip_flat_grad_norm(self._hand.flat_grad, self.max_grad_norm)
        groups = self.policy.optimizer.param_groups
        return clip_grad_norm([p for group in groups for p in group["params"]], self.max_grad_norm)

    def _excluded_save_params(self) -> list[str]:
        # Tools hold references into the policy; their own state goes through state_dict().
        return [
            *super()._excluded_save_params(),
            "tools",
            "_grad_norms",
            "_networks",
            "_loss_derivatives",
            "_hand",
            "_gradient_path",
        ]
