//! The counters the programs keep per CPU: every rule's packets and bytes,
//! and each attach point's drops, side by side in `COUNTERS` chunks (see
//! [`CounterChunk`]), and the bases in `COUNTER_BASE` that let the loader
//! zero one of them.
//!
//! The programs only add to a chunk. A counter slot given to a new rule
//! starts at zero because the loader records what the chunks hold for it at
//! that moment as its base, and reports the difference; writing the chunk
//! instead would race with the programs, which update the other counters of
//! the same per-CPU value at the same time, and lose their counts. An
//! attach point's base is the `dropped` bucket of its `ATTACH_STATS` slot,
//! which the programs leave alone. Sums wrap, so a base may stand below
//! zero: counts a migration carried over are subtracted from it.

use std::{os::fd::AsFd, os::fd::OwnedFd, path::Path};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use ingress_xdp_common::{
    CHUNK_RULES, COUNTER_CHUNKS, CounterChunk, MAX_ATTACH_POINTS, MAX_RULE_COUNTERS, RuleCounters,
};

use crate::{
    bpf::{self, records},
    pins::{MAP_COUNTER_BASE, MAP_COUNTERS},
    rules::open_map_at,
    sys,
};

/// What the chunks hold, summed over CPUs and before any base.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Indexed by counter slot.
    pub rules: Vec<RuleCounters>,
    /// Indexed by attach point.
    pub dropped: Vec<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            rules: vec![RuleCounters::default(); MAX_RULE_COUNTERS as usize],
            dropped: vec![0; MAX_ATTACH_POINTS as usize],
        }
    }
}

impl Tally {
    fn add(&mut self, chunk_index: u32, chunk: &CounterChunk) {
        let first = (chunk_index * CHUNK_RULES) as usize;
        for (sum, c) in self.rules.iter_mut().skip(first).zip(&chunk.rules) {
            *sum = plus(*sum, *c);
        }
        for (sum, d) in self.dropped.iter_mut().zip(&chunk.dropped) {
            *sum = sum.wrapping_add(*d);
        }
    }
}

/// The sum of two counts (wrapping, as bases may stand below zero).
pub(crate) fn plus(a: RuleCounters, b: RuleCounters) -> RuleCounters {
    RuleCounters {
        packets: a.packets.wrapping_add(b.packets),
        bytes: a.bytes.wrapping_add(b.bytes),
    }
}

fn minus(a: RuleCounters, b: RuleCounters) -> RuleCounters {
    RuleCounters {
        packets: a.packets.wrapping_sub(b.packets),
        bytes: a.bytes.wrapping_sub(b.bytes),
    }
}

fn chunk_of(slot: u16) -> (u32, usize) {
    (
        u32::from(slot) / CHUNK_RULES,
        usize::from(slot) % CHUNK_RULES as usize,
    )
}

pub struct Counters {
    chunks: PerCpuArray<MapData, CounterChunk>,
    chunks_fd: OwnedFd,
    base: Array<MapData, RuleCounters>,
    base_fd: OwnedFd,
    cpus: usize,
}

impl Counters {
    /// The counters whose maps are pinned in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Ok(Self {
            chunks: open_map_at(&dir.join(MAP_COUNTERS))?.try_into()?,
            chunks_fd: bpf::obj_get(&dir.join(MAP_COUNTERS))?,
            base: open_map_at(&dir.join(MAP_COUNTER_BASE))?.try_into()?,
            base_fd: bpf::obj_get(&dir.join(MAP_COUNTER_BASE))?,
            cpus: sys::possible_cpus()?,
        })
    }

    /// Every chunk of every CPU, summed, in one batched read.
    pub fn tally(&self) -> Result<Tally> {
        let per_cpu = size_of::<CounterChunk>();
        let (keys, values) = bpf::lookup_batch(
            self.chunks_fd.as_fd(),
            4,
            per_cpu * self.cpus,
            COUNTER_CHUNKS,
            MAP_COUNTERS,
        )?;
        let mut tally = Tally::default();
        for (index, value) in records::<u32>(&keys).zip(values.chunks_exact(per_cpu * self.cpus)) {
            for chunk in records::<CounterChunk>(value) {
                tally.add(index, &chunk);
            }
        }
        Ok(tally)
    }

    fn bases(&self) -> Result<Vec<RuleCounters>> {
        let (keys, values) = bpf::lookup_batch(
            self.base_fd.as_fd(),
            4,
            size_of::<RuleCounters>(),
            MAX_RULE_COUNTERS,
            MAP_COUNTER_BASE,
        )?;
        let mut out = vec![RuleCounters::default(); MAX_RULE_COUNTERS as usize];
        for (slot, base) in records::<u32>(&keys).zip(records::<RuleCounters>(&values)) {
            if let Some(b) = out.get_mut(slot as usize) {
                *b = base;
            }
        }
        Ok(out)
    }

    /// Every counter slot's count since it was given to its rule, indexed
    /// by slot: `tally` (see [`Counters::tally`]) less the bases, which
    /// take one more batched read.
    pub fn rule_counts(&self, tally: &Tally) -> Result<Vec<RuleCounters>> {
        let bases = self.bases()?;
        Ok(tally
            .rules
            .iter()
            .zip(&bases)
            .map(|(t, b)| minus(*t, *b))
            .collect())
    }

    /// What the chunks hold for one slot now, over every CPU.
    fn slot_tally(&self, slot: u16) -> Result<RuleCounters> {
        let (chunk, at) = chunk_of(slot);
        let values = self.chunks.get(&chunk, 0).with_context(|| {
            format!("reading {MAP_COUNTERS} chunk {chunk} (counter slot {slot})")
        })?;
        Ok(values
            .iter()
            .fold(RuleCounters::default(), |sum, c| plus(sum, c.rules[at])))
    }

    fn base_of(&self, slot: u16) -> Result<RuleCounters> {
        self.base
            .get(&u32::from(slot), 0)
            .with_context(|| format!("reading {MAP_COUNTER_BASE} slot {slot}"))
    }

    fn set_base(&mut self, slot: u16, base: RuleCounters) -> Result<()> {
        self.base
            .set(u32::from(slot), base, 0)
            .with_context(|| format!("writing {MAP_COUNTER_BASE} slot {slot}"))
    }

    /// Makes a slot count from zero: its base becomes what it holds now.
    pub fn reset(&mut self, slot: u16) -> Result<()> {
        let now = self.slot_tally(slot)?;
        self.set_base(slot, now)
    }

    /// Adds counts carried over from an older layout's counter to a slot.
    pub fn carry(&mut self, slot: u16, counts: RuleCounters) -> Result<()> {
        let base = self.base_of(slot)?;
        self.set_base(slot, minus(base, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_found_in_its_chunk() {
        assert_eq!(chunk_of(0), (0, 0));
        assert_eq!(chunk_of(127), (0, 127));
        assert_eq!(chunk_of(128), (1, 0));
        assert_eq!(chunk_of(4096), (32, 0));
        assert!(chunk_of(MAX_RULE_COUNTERS as u16 - 1).0 < COUNTER_CHUNKS);
    }

    #[test]
    fn tallies_add_each_chunk_at_its_place() {
        let mut chunk = CounterChunk::default();
        chunk.rules[1] = RuleCounters {
            packets: 2,
            bytes: 120,
        };
        chunk.dropped[3] = 2;
        let mut tally = Tally::default();
        tally.add(1, &chunk);
        tally.add(1, &chunk);
        assert_eq!(
            tally.rules[CHUNK_RULES as usize + 1],
            RuleCounters {
                packets: 4,
                bytes: 240
            }
        );
        assert_eq!(tally.rules[1], RuleCounters::default());
        assert_eq!(tally.dropped[3], 4);
    }

    #[test]
    fn a_carried_count_shows_through_a_base_below_zero() {
        let carried = RuleCounters {
            packets: 5,
            bytes: 300,
        };
        let base = minus(RuleCounters::default(), carried);
        let now = RuleCounters {
            packets: 2,
            bytes: 100,
        };
        assert_eq!(
            minus(now, base),
            RuleCounters {
                packets: 7,
                bytes: 400
            }
        );
    }
}
