"""Startup contract check: every upstream SGLang name the plugin subclasses, calls or hooks must still exist.

The project pins ``sglang==0.5.23``. The plugin extends SGLang only through its public plugin hooks, by
subclassing, and through a few :mod:`~sglang_domino.plugin.hooks` on named functions. If an upgrade renames or
removes one of those names the plugin must refuse to start and say which one, instead of failing somewhere deep
inside a scheduler process. :func:`check_contract` verifies each entry of :data:`CONTRACT` (module, attribute path
and, for methods we override or call with keywords, the keyword names we rely on).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Optional

PINNED_SGLANG_VERSION = "0.5.23"


class ContractError(RuntimeError):
    """An upstream name the plugin relies on is missing or changed shape."""


@dataclass(frozen=True)
class Requirement:
    module: str
    attr: str  # dotted path inside the module
    why: str
    params: tuple[str, ...] = ()  # keyword parameters that must be accepted, for callables
    reads: tuple[str, ...] = ()  # attribute conventions the callable's source must still mention

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"


_W2 = "sglang.srt.speculative.dflash_worker_v2"

CONTRACT: tuple[Requirement, ...] = (
    # --- registration (public plugin API)
    Requirement("sglang.srt.speculative.spec_info", "SpeculativeAlgorithm.register", "registers DOMINO",
                ("supports_overlap", "validate_server_args", "spec_class")),
    Requirement("sglang.srt.speculative.spec_info", "SpeculativeAlgorithm.create_future_map",
                "DominoSpecAlgo delegates the FutureMap to the builtin"),
    Requirement("sglang.srt.speculative.spec_info", "CustomSpecAlgo", "base of DominoSpecAlgo"),
    Requirement("sglang.srt.speculative.spec_info", "SpeculativeAlgorithm.from_string", "idempotent registration"),
    Requirement("sglang.srt.plugins.hook_registry", "HookRegistry.register", "registers the hooks"),
    Requirement("sglang.srt.plugins.hook_registry", "HookType.AROUND", "hook type of every hook"),
    # --- the worker we subclass and the methods we override / rely on
    Requirement(_W2, "DFlashWorkerV2", "base class of DominoWorker"),
    Requirement(_W2, "DFlashWorkerV2.__init__", "DominoWorker.__init__",
                ("server_args", "gpu_id", "nccl_port", "target_worker")),
    Requirement(_W2, "DFlashWorkerV2.forward_batch_generation", "overridden (CPU stream shim)",
                ("batch", "on_publish", "grammar_barrier", "pp_proxy_tensors")),
    Requirement(_W2, "DFlashWorkerV2._propose_selector_block", "overridden: Domino drafting",
                ("draft_logits_output", "bs", "lm_head", "anchor_token_ids", "sampling_info")),
    Requirement(_W2, "DFlashWorkerV2._accept_block", "overridden: Domino chain verification",
                ("candidates", "next_token_logits", "sampling_info", "draft_input", "prefix_lens", "bs",
                 "target_predict")),
    Requirement(_W2, "DFlashWorkerV2._maybe_build_draft_sampler", "overridden: no in-graph upstream head"),
    # --- how drafting reaches our _propose_selector_block: DominoWorker sets selector to a marker, clears
    # _is_domino (upstream's own greedy Domino rollout) and builds no draft sampler; upstream must still dispatch
    # on exactly these attributes, in this order, or a rename would silently bypass Domino.
    Requirement(_W2, "DFlashWorkerV2.__init__", "the attributes DominoWorker overrides after construction",
                reads=("self._draft_sampler = None", "self.selector = ", "self.lilicorr = ", "self._is_domino = ",
                       "self._selector_sample")),
    Requirement(_W2, "DFlashWorkerV2.init_cuda_graphs", "the draft sampler comes from _maybe_build_draft_sampler",
                reads=("self._draft_sampler = self._maybe_build_draft_sampler()",)),
    Requirement(_W2, "DFlashWorkerV2.forward_batch_generation", "drafting dispatch reaching _propose_selector_block",
                reads=("self._is_domino", "self._draft_sampler is not None and draft_out.can_run_graph",
                       "elif self.selector is not None:", "draft_next = self._propose_selector_block(",
                       "anchor_token_ids=block_ids[:, 0]", "self._selector_sample = None")),
    Requirement(_W2, "DFlashWorkerV2._accept_block", "upstream's selector verification must stay off for Domino",
                reads=("if self._selector_sample is not None:",)),
    # --- plain-width steps (draft_width): the width-shaped attributes we swap must still be what upstream uses
    Requirement(_W2, "DFlashWorkerV2.forward_batch_generation", "draft_width swaps these per step",
                reads=("self.block_size", "_block_pos_offsets", "_draft_block_spec_info", "_draft_block_ids_buf",
                       "_draft_block_positions_buf", "_draft_block_tokens_buf", "_draft_verify_out_cache_loc_buf",
                       "_draft_seq_lens_cpu_buf", "self._ensure_draft_block_buffers(bs)",
                       "self.draft_model_runner.forward(forward_batch)", "draft_out.logits_output",
                       "speculative_num_draft_tokens=int(self.block_size)")),
    # --- plain-width steps on CPU run the one-token verify as a decode (DominoWorker._verify_one_token_as_decode):
    # upstream must still verify through target_worker.forward_batch_generation(forward_batch=...) with host
    # lengths of committed + width, and the decode forward must take a ForwardBatch built elsewhere
    Requirement(_W2, "DFlashWorkerV2.forward_batch_generation", "plain-width steps verify as a decode",
                reads=("self.target_worker.forward_batch_generation(", "forward_batch=verify_forward_batch",
                       "verify_host_seq_lens = seq_lens_cpu_backup + block_size")),
    Requirement("sglang.srt.managers.tp_worker", "TpModelWorker.forward_batch_generation",
                "plain-width steps verify as a decode", ("batch", "forward_batch", "is_verify")),
    Requirement("sglang.srt.model_executor.forward_batch_info", "ForwardMode.DECODE", "plain-width verify mode"),
    Requirement("sglang.srt.model_executor.forward_batch_info", "ForwardMode.TARGET_VERIFY",
                "plain-width verify mode"),
    Requirement(_W2, "DFlashWorkerV2._ensure_draft_block_buffers", "draft_width: one buffer set per width",
                reads=("_draft_block_ids_buf", "_draft_block_end_buf", "_draft_seq_lens_cpu_buf")),
    Requirement("sglang.srt.speculative.draft_worker_common", "build_block_pos_offsets",
                "draft_width: position offsets of a plain-width step", ("length", "device")),
    Requirement("sglang.srt.speculative.draft_worker_common", "make_draft_block_spec_info",
                "draft_width: spec info of a plain-width step", ("draft_token_num", "device")),
    Requirement(_W2, "_commit_accept", "builds the committed block from accept_len and bonus"),
    Requirement(_W2, "_resolve_dflash_embedding_module", "target embedding used by the drafter"),
    Requirement("sglang.srt.lora.layers", "unwrap_lora_layer", "plain lm_head / embedding"),
    Requirement("sglang.srt.models.dflash", "DFlashDraftModel", "upstream draft model (backbone + head modules)"),
    Requirement("sglang.srt.speculative.dflash_utils", "parse_dflash_draft_config", "hooked: pure_draft_prefix_len",
                ("draft_hf_config",)),
    Requirement("sglang.srt.arg_groups.overrides", "resolving_view", "reads server args"),
    # --- target hidden-state capture at the drafter's target_layer_ids (Llama and Qwen3 families)
    Requirement("sglang.srt.models.llama", "LlamaForCausalLM.set_dflash_layers_to_capture", "Llama-family capture"),
    Requirement("sglang.srt.models.qwen3", "Qwen3ForCausalLM.set_dflash_layers_to_capture", "Qwen3-family capture"),
    # --- hooked functions (sglang_domino.plugin.hooks)
    Requirement("sglang.srt.speculative.domino_utils", "validate_domino_runtime", "hooked: CUDA-only device check",
                ("device",)),
    Requirement("sglang.srt.speculative.draft_worker_common", "resolve_draft_worker_attention_backend",
                "hooked: torch_native draft attention on CPU", ("algo_label",)),
    Requirement("sglang.srt.layers.attention.torch_native_backend", "TorchNativeAttnBackend.forward_extend",
                "hooked: TARGET_VERIFY batches on torch_native",
                ("q", "k", "v", "layer", "forward_batch", "save_kv_cache")),
    Requirement("sglang.srt.layers.attention.torch_native_backend", "TorchNativeAttnBackend._run_sdpa_forward_extend",
                "hooked: new-token rows only for speculative extends",
                ("query", "output", "k_cache", "v_cache", "req_to_token", "req_pool_indices", "seq_lens",
                 "extend_prefix_lens", "extend_seq_lens", "encoder_lens", "scaling", "enable_gqa", "causal",
                 "is_cross_attn", "sliding_window_size")),
    Requirement("sglang.srt.model_executor.model_runner", "ModelRunner._extend_forward_kwargs",
                "hooked: keep the draft's dtype for block embeddings", ("forward_batch",)),
    Requirement("sglang.srt.arg_groups.speculative_hook", "_resolve_speculative_algorithm_alias",
                "hooked: drafter checked before SGLang reads its config",
                ("speculative_algorithm", "speculative_draft_model_path")),
    Requirement("sglang.srt.model_executor.forward_batch_info", "ForwardMode.is_target_verify",
                "TARGET_VERIFY detection"),
    Requirement("sglang.srt.layers.quantization.unquant", "UnquantizedLinearMethod.apply",
                "hooked: small-batch float32 linears on CPU", ("layer", "x", "bias"), reads=("F.linear",)),
    Requirement("sglang.srt.layers.logits_processor", "LogitsProcessor._compute_lm_head",
                "hooked: small-batch float32 lm_head on CPU", ("hidden_states", "lm_head", "embedding_bias", "out"),
                reads=("should_apply_lm_head_quant_method", "use_fp32_lm_head", "rl_on_policy_target",
                       "lm_head.weight.T")),
    Requirement("sglang.srt.layers.attention.torch_native_backend", "TorchNativeAttnBackend._run_sdpa_forward_decode",
                "hooked: CPU decode attention gathers keys with index_select",
                ("query", "output", "k_cache", "v_cache", "req_to_token", "req_pool_indices", "seq_lens",
                 "encoder_lens", "scaling", "enable_gqa", "causal", "is_cross_attn", "sliding_window_size")),
    Requirement("sglang.srt.layers.logits_processor", "should_apply_lm_head_quant_method",
                "the lm_head hook defers to upstream's quantized-lm_head test"),
    Requirement("sglang.srt.utils.common", "use_intel_amx_backend",
                "the linear hooks leave AMX-packed layers to upstream"),
    Requirement("sglang.srt.layers.sampler", "Sampler.forward",
                "hooked: a seeded request's first token drawn with its seed",
                ("logits_output", "sampling_info", "return_logprob", "top_logprobs_nums", "token_ids_logprobs",
                 "positions")),
    Requirement("sglang.srt.sampling.sampling_batch_info", "SamplingBatchInfo.copy_for_forward",
                "the worker tags the forward-only sampling_info of a prefill with the requests' seeds"),
    # --- CPU tensor parallelism (sglang_domino.plugin.cpu_tp), hooked on SGLang's CPU engine
    Requirement("sglang.srt.utils.numa_utils", "init_threads_binding",
                "hooked: a default core split when TP ranks exceed NUMA nodes", ("numa_index", "world_size"),
                reads=("SGLANG_CPU_OMP_THREADS_BIND", "get_cpu_ids_by_node()")),
    Requirement("sglang.srt.utils.numa_utils", "get_cpu_ids_by_node", "the NUMA nodes upstream binds ranks to"),
    Requirement("sglang.srt.distributed.bootstrap", "_init_cpu_threads_env",
                "hooked: binds each TP rank's threads where upstream only warns", ("local_omp_cpuid",),
                reads=("_is_cpu_amx_available or _is_cpu_arm64", "init_cpu_threads_env")),
    Requirement("sglang.srt.distributed.bootstrap", "_is_cpu_amx_available", "upstream's own CPU binding condition"),
    Requirement("sglang.srt.distributed.bootstrap", "_is_cpu_arm64", "upstream's own CPU binding condition"),
    Requirement("sglang.srt.distributed.bootstrap", "init_parallel_runtime",
                "calls the two hooked binding functions, by these names",
                reads=("_bind_threads_if_cpu(", "_init_cpu_threads_env(")),
    Requirement("sglang.srt.distributed.bootstrap", "_bind_threads_if_cpu",
                "reaches the hooked binding through the module attribute", reads=("numa_utils.init_threads_binding(",)),
    Requirement("sglang.srt.runtime_context", "get_parallel", "the ranks of this server (dp, tp, pp sizes)"),
    Requirement("sglang.srt.distributed.parallel_state", "init_model_parallel_group",
                "hooked: gloo groups without PyNccl", ("backend", "use_pynccl", "use_custom_allreduce")),
    Requirement("sglang.srt.distributed.parallel_state", "GroupCoordinator.all_reduce",
                "CPU tensors all-reduce through torch.distributed on the gloo group",
                reads=("input_.is_cpu", "torch.distributed.all_reduce(input_, group=self.device_group)")),
    # --- hook 15: a multi-token step finishes at its earliest stop (hooks._req_update_finish_state)
    Requirement("sglang.srt.managers.schedule_batch", "Req.update_finish_state",
                "hooked: the earliest stop of a multi-token step wins", ("new_accepted_len",),
                reads=("_check_str_based_finish(new_accepted_len)", "_check_token_based_finish(new_accepted_tokens)")),
    Requirement("sglang.srt.managers.schedule_batch", "Req._locate_str_stop_finished_len",
                "where a stop string ends inside a step", ("new_accepted_len", "stop_str")),
    Requirement("sglang.srt.managers.schedule_batch", "Req.tail_str", "the step's text", ("new_accepted_len",)),
    Requirement("sglang.srt.managers.schedule_batch", "Req._cap_finished_len_at_max_new_tokens",
                "a moved finish stays within max_new_tokens"),
    Requirement("sglang.srt.managers.schedule_batch", "Req._check_token_based_finish",
                "the hook asks it for a step's first stop token", ("new_accepted_tokens",),
                reads=("matched_pos = len(self.output_ids) - len(new_accepted_tokens) + i",)),
    # --- tensor-parallel drafting (worker.target_vocab_shard, _accept_block, the width broadcast)
    Requirement("sglang.srt.layers.vocab_parallel_embedding", "VocabParallelEmbedding.__init__",
                "a rank's vocabulary rows of lm_head / embedding",
                reads=("self.tp_size", "self.shard_indices = ", "self.num_embeddings_per_partition")),
    Requirement("sglang.srt.layers.vocab_parallel_embedding", "VocabParallelEmbeddingShardIndices.num_added_elements_padded",
                "added (LoRA) vocabulary refused under TP"),
    Requirement("sglang.srt.layers.vocab_parallel_embedding", "VocabParallelEmbedding._get_indices",
                "shards are contiguous, ascending, padded_org_vocab_start_index first",
                reads=("vocab_range_from_global_vocab_size(org_vocab_size_padded, tp_rank, tp_size)",)),
    Requirement(_W2, "DFlashWorkerV2.__init__", "the TP group's rank-0 broadcast of verdicts and the rank for logs",
                reads=("self._tp_sync = SpecTpSync(", "self._target_tp_rank = get_parallel().tp_rank")),
    Requirement("sglang.srt.speculative.spec_tp_sync", "SpecTpSync.sync", "broadcasts a verdict from TP rank 0",
                ("site", "values")),
    Requirement("sglang.srt.speculative.spec_tp_sync", "SpecTpSyncSite.DFLASH_ACCEPT_GREEDY", "greedy verdict site"),
    Requirement("sglang.srt.speculative.spec_tp_sync", "SpecTpSyncSite.DFLASH_ACCEPT_SAMPLE", "sampled verdict site"),
    Requirement("sglang.srt.distributed.parallel_state", "GroupCoordinator.all_gather_into_tensor",
                "vocabulary-parallel argmax / logits gather", ("output", "input")),
    Requirement("sglang.srt.distributed.parallel_state", "GroupCoordinator.broadcast",
                "sampled drafts and the step width from rank 0", ("input_", "src")),
    # --- conventions: attributes we set on upstream modules that upstream must still read
    Requirement("sglang.srt.model_executor.model_runner_components.weight_updater",
                "_unsupported_derived_weight_cache_error",
                "refuses online weight updates while drafts use a converted lm_head copy",
                reads=("_derived_weight_cache_error",)),
)


def _resolve(req: Requirement):
    module = importlib.import_module(req.module)
    obj = module
    for part in req.attr.split("."):
        obj = getattr(obj, part)
    return obj


def _missing_params(obj, params: tuple[str, ...]) -> list[str]:
    if not params:
        return []
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    accepted = sig.parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return []
    return [p for p in params if p not in accepted]


def _unread(obj, names: tuple[str, ...]) -> list[str]:
    if not names:
        return []
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return list(names)  # cannot show the convention still holds: treat as broken
    return [name for name in names if name not in source]


def sglang_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # noqa: BLE001 - metadata may be absent in source trees
        return None


def check_contract(requirements: tuple[Requirement, ...] = CONTRACT) -> None:
    """Raise :class:`ContractError` naming the first missing upstream name (module + attribute)."""
    found = sglang_version()
    pin = f"sglang-domino is pinned to sglang=={PINNED_SGLANG_VERSION}, found {found or 'unknown'}"
    for req in requirements:
        try:
            obj = _resolve(req)
        except ImportError as exc:
            raise ContractError(f"SGLang contract check failed: module {req.module} cannot be imported "
                                f"({exc}); needed for {req.name} ({req.why}); {pin}") from exc
        except AttributeError as exc:
            raise ContractError(f"SGLang contract check failed: {req.name} is missing ({req.why}); {pin}") from exc
        missing = _missing_params(obj, req.params)
        if missing:
            raise ContractError(f"SGLang contract check failed: {req.name} no longer accepts "
                                f"{', '.join(missing)} ({req.why}); {pin}")
        unread = _unread(obj, req.reads)
        if unread:
            raise ContractError(f"SGLang contract check failed: {req.name} no longer reads "
                                f"{', '.join(unread)} ({req.why}); {pin}")


_failure: Optional[ContractError] = None  # this process's result, kept by check_contract_once


def check_contract_once() -> Optional[ContractError]:
    """:func:`check_contract` in this process (the plugin's ``register``), its failure kept for
    :func:`contract_error` rather than raised: SGLang's ``load_plugins`` swallows a plugin's exceptions."""
    global _failure
    try:
        check_contract()
        _failure = None
    except ContractError as exc:
        _failure = exc
    return _failure


def contract_error() -> Optional[ContractError]:
    """The contract check's failure in this process, if any (``validate_server_args`` refuses to start on it)."""
    return _failure


__all__ = ["CONTRACT", "ContractError", "PINNED_SGLANG_VERSION", "Requirement", "check_contract",
           "check_contract_once", "contract_error", "sglang_version"]
