//! The tensor-parallel check on the CPU: N simulated devices are N fresh instances of the
//! reference (`registry::create_on`), driven from N threads at once. The same code path runs
//! one GPU instance per device on a multi-GPU machine (`conformance --shards N`).

use attnforge_api::{registry, DType};
use attnforge_conformance::mutants::{Bug, Mutant};
use attnforge_conformance::sharded::{check_sharded, ShardProblem};

fn cpu_shards(n: usize) -> Vec<attnforge_api::Backend> {
    attnforge_conformance::link_backends();
    (0..n).map(|_| registry::create_on("cpu", 0).unwrap()).collect()
}

#[test]
fn heads_split_over_instances_match_the_unsharded_reference() {
    let reference = registry::get("cpu").unwrap();
    for (n, dtype) in [(1, DType::F32), (2, DType::BF16), (4, DType::F16), (8, DType::F32)] {
        let p = ShardProblem { dtype, decode_steps: 3, ..Default::default() };
        let r = check_sharded(&cpu_shards(n), &reference, &p).unwrap_or_else(|e| panic!("{n} shards, {dtype}: {e}"));
        assert_eq!((r.shards, r.steps), (n, 5));
        // Heads are independent and the reference is deterministic: the gather is exact.
        assert_eq!(r.max_abs_err, 0.0, "{n} shards, {dtype}");
    }
    // A shard count that does not divide the KV heads is refused, not run.
    assert!(check_sharded(&cpu_shards(3), &reference, &ShardProblem::default()).unwrap_err().contains("must divide"));
}

#[test]
fn a_planted_bug_in_the_shards_fails_the_check() {
    let reference = registry::get("cpu").unwrap();
    for bug in [Bug::CausalOffByOne, Bug::GqaModulo, Bug::UnwrittenElement] {
        let shards: Vec<_> = (0..2).map(|_| Mutant::handle(bug)).collect();
        let e = check_sharded(&shards, &reference, &ShardProblem { decode_steps: 2, ..Default::default() }).expect_err(bug.name());
        assert!(e.contains("sharded step"), "{}: {e}", bug.name());
    }
}
