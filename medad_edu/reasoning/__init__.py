"""Reasoning about anomalies: think-then-answer outputs, rule-based rewards and a two-stage policy (after MedAD-R1).

MedAD-R1 (Zhang et al., "MedAD-R1: Eliciting Consistent Reasoning in Interpretable Medical Anomaly Detection
via Consistency-Reinforced Policy Optimization") teaches a large multimodal model to answer questions about
medical images *after* writing out its reasoning, in two stages: supervised fine-tuning on structured
think-then-answer chains of thought ("cognitive injection"), then policy optimisation with rewards that also
check that the reasoning and the answer agree. This package teaches every idea at CPU scale:

- ``vqa``      -- a VQA set from our detection data (abnormal? organ/modality? region on a 3x3 grid? size?) with
                  reference chains assembled from the ground truth; optionally a detector's anomaly map as input;
- ``vocab``, ``format`` -- the closed vocabulary, the ``<think>...</think><answer>...</answer>`` format and a
                  parser that never crashes;
- ``rewards``  -- format validity, answer correctness, reasoning/answer consistency, and their weighted sum;
- ``policy``   -- a conv encoder + GRU decoder over the vocabulary (greedy / sampled, batched, with log-probs);
- ``sft``      -- stage 1, teacher-forced cross-entropy on the reference chains;
- ``grpo``     -- stage 2, group-relative policy optimisation with a clipped ratio and a k3 KL to stage 1;
- ``metrics``  -- answer accuracy, format validity, consistency rate, region accuracy.

Explained in notebooks/30_reasoning_vqa_sft.ipynb and notebooks/31_reasoning_grpo.ipynb.

Example::

    from medad_edu.data import load_data
    from medad_edu.reasoning import (ReasoningPolicy, SFTConfig, GRPOConfig, build_vqa_set, evaluate_policy,
                                     train_grpo, train_sft)
    data = load_data("embedded", image_size=32, sizes="tiny")
    train_set, test_set = build_vqa_set(data, "valid"), build_vqa_set(data, "test")
    policy = ReasoningPolicy(image_size=32)
    train_sft(policy, train_set, SFTConfig(epochs=5))
    before, _ = evaluate_policy(policy, test_set)
    train_grpo(policy, train_set, GRPOConfig(steps=10))
    after, _ = evaluate_policy(policy, test_set)

Defined in: notebooks/30_reasoning_vqa_sft.ipynb, notebooks/31_reasoning_grpo.ipynb
"""
from .format import ParsedOutput, answer_tokens, parse_output, reference_output, think_text
from .grpo import (GRPOConfig, Rollout, frozen_copy, group_advantages, grpo_loss, grpo_update, k3_kl,
                   sample_rollout, train_grpo)
from .metrics import METRIC_NAMES, evaluate_policy, generate_outputs, reasoning_metrics
from .policy import Generation, ReasoningPolicy, sequence_mask
from .rewards import (REWARD_WEIGHTS, RewardBreakdown, answer_reward, consistency_check, consistency_reward,
                      format_reward, implied_answer, score_outputs, think_coherence, total_reward)
from .sft import SFTConfig, load_or_train_sft, load_policy, save_policy, sft_loss, train_sft
from .vocab import QUESTION_TYPES, QUESTIONS, TASK_FACTS, VOCAB, Vocab, tokenize
from .vqa import (SIZE_THRESHOLDS, VQASet, build_vqa_set, concat_vqa_sets, image_facts, map_scale, mask_regions,
                  size_classes)

__all__ = ["GRPOConfig", "Generation", "METRIC_NAMES", "ParsedOutput", "QUESTIONS", "QUESTION_TYPES",
           "REWARD_WEIGHTS", "ReasoningPolicy", "RewardBreakdown", "Rollout", "SFTConfig", "SIZE_THRESHOLDS",
           "TASK_FACTS", "VOCAB", "VQASet", "Vocab", "answer_reward", "answer_tokens", "build_vqa_set",
           "concat_vqa_sets", "consistency_check", "consistency_reward", "evaluate_policy", "format_reward",
           "frozen_copy", "generate_outputs", "group_advantages", "grpo_loss", "grpo_update", "image_facts",
           "implied_answer", "k3_kl", "load_or_train_sft", "load_policy", "map_scale", "mask_regions",
           "parse_output", "reasoning_metrics", "reference_output", "sample_rollout", "save_policy",
           "score_outputs", "sequence_mask", "sft_loss", "size_classes", "think_coherence", "think_text",
           "tokenize", "total_reward", "train_grpo", "train_sft"]
