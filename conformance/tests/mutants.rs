//! The suite must catch every planted bug. Each mutant runs only the check of the op it breaks,
//! in the dtype where the bug shows (f16 for the softmax overflow).

use attnforge_api::{DType, Op};
use attnforge_conformance::mutants::{Bug, Mutant};
use attnforge_conformance::{check_backend, Config};

fn caught(bug: Bug, dtype: DType) {
    let cfg = Config { cases: 64, dtypes: vec![dtype], ops: vec![bug.op()], errors: false, head_dims: vec![32, 64, 128], ..Config::default() };
    let report = check_backend(&Mutant::handle(bug), &cfg);
    let failure = report.cells.iter().find_map(|c| c.failure.as_ref());
    let f = failure.unwrap_or_else(|| panic!("{bug:?} was not caught:\n{}", report.to_markdown()));
    println!("{bug:?} caught: {}", f.message);
    assert!(!f.case.is_empty(), "a shrunk counterexample is reported");
}

#[test]
fn rope_style_swap_is_caught() {
    caught(Bug::RopeStyleSwapped, DType::F32);
}

#[test]
fn causal_off_by_one_is_caught() {
    caught(Bug::CausalOffByOne, DType::F32);
}

#[test]
fn gqa_modulo_is_caught() {
    caught(Bug::GqaModulo, DType::BF16);
}

#[test]
fn unwritten_element_is_caught() {
    caught(Bug::UnwrittenElement, DType::F32);
}

#[test]
fn softmax_without_max_subtraction_is_caught_in_f16() {
    caught(Bug::SoftmaxNoMax, DType::F16);
}

#[test]
fn append_ignoring_page_table_is_caught() {
    caught(Bug::AppendIgnoresPageTable, DType::F16);
}

#[test]
fn an_ignored_softmax_scale_is_caught() {
    caught(Bug::ScaleIgnored, DType::F32);
}

#[test]
fn shift_with_the_wrong_sign_is_caught() {
    caught(Bug::ShiftWrongSign, DType::F32);
}

/// Only the engine path's views are strided: the owned cell passes, the views cell fails.
#[test]
fn rope_ignoring_the_row_stride_is_caught_on_the_views_path() {
    caught(Bug::RopeIgnoresRowStride, DType::BF16);
    let cfg = Config { cases: 16, dtypes: vec![DType::BF16], ops: vec![Op::Rope], errors: false, head_dims: vec![64], ..Config::default() };
    let report = check_backend(&Mutant::handle(Bug::RopeIgnoresRowStride), &cfg);
    let cell = |op: &str| report.cells.iter().find(|c| c.op == op).unwrap();
    assert!(cell("rope").failure.is_none(), "{}", report.to_markdown());
    assert!(cell("rope/views").failure.is_some(), "{}", report.to_markdown());
}

#[test]
fn an_lse_in_base_2_is_caught() {
    caught(Bug::LseBase2, DType::F32);
}

#[test]
fn a_merge_that_ignores_the_lse_is_caught() {
    caught(Bug::MergeIgnoresLse, DType::BF16);
}

#[test]
fn mrope_positions_read_token_major_are_caught() {
    caught(Bug::MropeTokenMajor, DType::F32);
}

#[test]
fn fp8_heads_dequantised_with_head_zero_scales_are_caught() {
    caught(Bug::Fp8HeadZeroScale, DType::BF16);
}

#[test]
fn every_bug_has_a_test() {
    assert_eq!(Bug::ALL.len(), 22);
    assert!(Bug::ALL.iter().all(|b| Op::ALL.contains(&b.op())));
}

/// Only the plan path plans a decoy step and then updates the plan: the owned and views cells
/// pass, the plan cell fails.
#[test]
fn a_plan_update_that_keeps_the_old_step_is_caught_on_the_plan_path() {
    caught(Bug::StalePlanUpdate, DType::F32);
    let cfg = Config { cases: 16, dtypes: vec![DType::F32], ops: vec![Op::Attention], errors: false, head_dims: vec![64], ..Config::default() };
    let report = check_backend(&Mutant::handle(Bug::StalePlanUpdate), &cfg);
    let cell = |op: &str| report.cells.iter().find(|c| c.op == op).unwrap();
    assert!(cell("attention").failure.is_none(), "{}", report.to_markdown());
    assert!(cell("attention/views").failure.is_none(), "{}", report.to_markdown());
    assert!(cell("attention/plan").failure.is_some(), "{}", report.to_markdown());
}

#[test]
fn a_step_that_rotates_k_twice_is_caught() {
    caught(Bug::StepRotatesKTwice, DType::F32);
}

#[test]
fn a_step_that_leaves_q_unrotated_is_caught() {
    caught(Bug::HybridQUnrotated, DType::BF16);
}

/// Only decodes over more keys than one split show it: the suite draws them.
#[test]
fn a_split_k_merge_that_drops_a_split_is_caught() {
    caught(Bug::SplitMergeDropsSplit, DType::F16);
}

/// Plain RoPE is right: only the scaled cases show it.
#[test]
fn a_scaling_table_shifted_by_one_pair_is_caught() {
    caught(Bug::ScalingTableShifted, DType::F32);
}

/// Only non-causal attention with more queries than keys shows it: the cross cases.
#[test]
fn cross_attention_rows_left_unwritten_are_caught() {
    caught(Bug::CrossRowsUnwritten, DType::BF16);
}

/// Only the quarter of the cases that draw a soft-cap show it.
#[test]
fn an_ignored_logit_soft_cap_is_caught() {
    caught(Bug::SoftcapIgnored, DType::F32);
}

/// Only windowed cases whose window holds fewer keys than the query sees show it.
#[test]
fn a_sliding_window_one_key_too_wide_is_caught() {
    caught(Bug::WindowOffByOne, DType::BF16);
}

/// Only the quarter of the cases that draw attention sinks show it.
#[test]
fn ignored_attention_sinks_are_caught() {
    caught(Bug::SinksIgnored, DType::F16);
}
