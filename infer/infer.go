// Package infer is VTTIF, the Virtual Topology and Traffic Inference
// Framework: it learns, from Ethernet frames alone, what the distributed
// application inside the VMs is doing: its VM×VM traffic matrix and the
// communication topology behind it. It is pure logic: no network, no
// other vnet package; the appliance feeds it and serves its answers.
//
// # Local half (every daemon)
//
// Each daemon counts, per (source MAC, destination MAC) pair of IP
// traffic it forwards, bytes and frames into a per-second ring that
// answers "the matrix over the last n seconds" in memory proportional to
// the pairs that talk. A rate trigger per pair (byte_threshold bytes
// within time_bound) starts accumulation; after t_max of sustained
// traffic the host reports its deltas to the proxy (about 1 Hz); after
// t_wait below the threshold it reports the pair quiet. A frame is counted
// only by the host of its source VM, so the global sum never counts a
// frame twice.
//
// # Global half (the proxy): Aggregator
//
//  1. Aggregation. Add merges a host's deltas into the current second's
//     bucket of a ring of per-second buckets (Keep, default 1 h), each
//     sparse by pair. Reports are deduplicated by (host, seq).
//  2. Smoothing. The smoothed matrix is the sum over the last Window
//     (default 10 s): a boxcar low-pass filter. Pairs reported quiet leave
//     it at once. A longer window is steadier but slower to let a stopped
//     edge go (it leaves when its share falls under b_min).
//  3. Inference (Infer, pure): normalise by the largest entry, prune
//     entries under BMin (default 0.1) × the largest, keep the rest as
//     weighted directed edges. A higher b_min ignores more background
//     (ARP, DNS, monitoring) but may drop the light edges of an uneven
//     pattern.
//  4. Archetype recognition (Recognize, pure): on the undirected edge set,
//     by graph structure only (degree sequence, connectivity, bipartiteness,
//     then colour refinement and a backtracking isomorphism check against
//     the generated candidate): ring, bus, mesh2d, mesh3d, torus2d, torus3d,
//     hypercube, tree (binary reduction tree), all2all, else unknown, with
//     a confidence (1 for an exact match; lower when weak edges had to be
//     dropped to fit, or the cut at b_min was close to the noise). For
//     all2all-like patterns the node that receives ≥ 1.5× the others'
//     median is named the hub (the NAS IS benchmark's root).
//  5. Change detection with hysteresis. Tick (about 1 Hz and after each
//     Add) infers a candidate; once its structure has held for Settle
//     (default 1 s, ≥ 2 ticks) and it differs from the declared one by
//     more than Threshold (default 0.3) in total-variation distance (the
//     share of traffic that moved, on the pruned matrices normalised to
//     sum 1), it is declared: a "topology-change" event, kept in a history
//     (History, default 256) and streamed to subscribers. A lower threshold
//     or settle reacts faster and flaps more. When all traffic stops, a
//     "quiet" event; the next pattern is then declared afresh.
//
// Concurrency: the Aggregator is safe for concurrent use; one mutex, no
// blocking on subscribers (a slow one loses events, counted).
package infer
