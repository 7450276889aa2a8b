//! The mixed run's verdict: what each connection received compared with
//! every acknowledged message of its rooms, and the figures.

use super::MixedArgs;
use super::actor::ActorOut;
use crate::Report;
use crate::measure::Measured;
use crate::stats::{hist_text, merge, new_hist, r3};

/// How long the phases of a mixed run took.
#[derive(Debug, Clone, Copy)]
pub struct MixedTimes {
    /// From the start until every connection had its acks.
    pub active_s: f64,
    pub connect_s: f64,
    pub failed_connects: usize,
}

/// Compare what each connection received with every acknowledged message of
/// its rooms, and report.
pub fn mixed_report(
    report: &mut Report,
    args: &MixedArgs,
    outs: &[ActorOut],
    sizes: &[usize],
    measured: &Measured,
    times: &MixedTimes,
) {
    let MixedTimes {
        active_s,
        connect_s,
        failed_connects,
    } = *times;
    let mut by_room: Vec<Vec<i64>> = vec![Vec::new(); args.rooms];
    for out in outs {
        for &(room, id) in &out.acked {
            by_room[room].push(id);
        }
    }
    for ids in &mut by_room {
        ids.sort_unstable();
        ids.dedup();
    }
    let (mut lost, mut duplicated, mut unexpected, mut deliveries) = (0u64, 0u64, 0u64, 0u64);
    let mut conns_with_loss = 0u64;
    let mut ack_latency = new_hist();
    let mut e2e_latency = new_hist();
    let sum = |f: fn(&ActorOut) -> u64| outs.iter().map(f).sum::<u64>();
    for out in outs.iter().filter(|o| o.failed.is_none()) {
        merge(&mut ack_latency, &out.ack_latency);
        merge(&mut e2e_latency, &out.e2e_latency);
        let mut lost_here = 0;
        for (local, &room) in out.spec.rooms.iter().enumerate() {
            let mut got = out.received[local].clone();
            deliveries += got.len() as u64;
            got.sort_unstable();
            let before = got.len();
            got.dedup();
            duplicated += (before - got.len()) as u64;
            let common = count_common(&got, &by_room[room]);
            lost_here += (by_room[room].len() - common) as u64;
            unexpected += (got.len() - common) as u64;
        }
        lost += lost_here;
        conns_with_loss += u64::from(lost_here > 0);
    }
    let failed = outs.iter().filter(|o| o.failed.is_some()).count();
    let acked: u64 = by_room.iter().map(|ids| ids.len() as u64).sum();
    let biggest = sizes.iter().copied().max().unwrap_or(0);
    let occupied = sizes.iter().filter(|&&s| s > 0).count();
    report.duration_s = active_s;
    report.fig("connections", outs.len());
    report.fig("connect_s", r3(connect_s));
    report.fig("largest_room", biggest);
    report.fig("occupied_rooms", occupied);
    report.fig("sends", sum(|o| o.sends));
    report.fig("acked", acked);
    report.fig("acked_per_s", r3(acked as f64 / active_s.max(1e-9)));
    report.hist("ack", &ack_latency);
    report.fig("deliveries", deliveries);
    report.fig(
        "deliveries_per_s",
        r3(deliveries as f64 / active_s.max(1e-9)),
    );
    report.hist("e2e", &e2e_latency);
    report.fig("lost", lost);
    report.fig("duplicated", duplicated);
    report.fig("unexpected", unexpected);
    report.fig("connections_with_loss", conns_with_loss);
    report.fig("order_violations", sum(|o| o.order_violations));
    report.fig("retries", sum(|o| o.retries));
    report.fig("duplicate_acks", sum(|o| o.duplicate_acks));
    report.fig("ack_id_mismatches", sum(|o| o.ack_id_mismatches));
    report.fig("reconnects", sum(|o| o.reconnects));
    report.fig("resent_after_reconnect", sum(|o| o.resent));
    report.fig("replayed_on_reconnect", sum(|o| o.replayed));
    report.fig("lost_connections", sum(|o| o.lost_connections));
    report.fig("typing_received", sum(|o| o.typing_received));
    report.fig("drafts_received", sum(|o| o.drafts_received));
    report.fig("presence_received", sum(|o| o.presence_received));
    report.fig("errors", sum(|o| o.errors));
    report.fig("unacked_at_end", sum(|o| o.unacked_at_end));
    report.fig("cpu_us_per_msg", measured.cpu_per(acked));
    report.fig("cpu_us_per_delivery", measured.cpu_per(deliveries));
    report.line(format!(
        "population      {} connections of {} users in {occupied} rooms (largest {biggest}); connected in {connect_s:.2} s",
        outs.len(),
        args.users
    ));
    report.line(format!(
        "messages        {} sends ({} retried), {acked} stored = {:.1}/s",
        sum(|o| o.sends),
        sum(|o| o.retries),
        acked as f64 / active_s.max(1e-9)
    ));
    report.line(format!("ack latency     {}", hist_text(&ack_latency)));
    report.line(format!(
        "deliveries      {deliveries} = {:.0}/s; e2e {}",
        deliveries as f64 / active_s.max(1e-9),
        hist_text(&e2e_latency)
    ));
    report.line(format!(
        "reconnects      {} ({} sends resent, {} messages replayed), {} connections lost",
        sum(|o| o.reconnects),
        sum(|o| o.resent),
        sum(|o| o.replayed),
        sum(|o| o.lost_connections)
    ));
    report.line(format!(
        "side traffic    {} typing, {} drafts, {} presence frames received",
        sum(|o| o.typing_received),
        sum(|o| o.drafts_received),
        sum(|o| o.presence_received)
    ));
    report.line(format!(
        "lost {lost} (on {conns_with_loss} connections), duplicated {duplicated}, unexpected {unexpected}, order violations {}",
        sum(|o| o.order_violations)
    ));
    report.line(format!(
        "server cpu      {} µs per message, {} µs per delivery",
        measured
            .cpu_per(acked)
            .map_or("?".into(), |v| format!("{v:.0}")),
        measured
            .cpu_per(deliveries)
            .map_or("?".into(), |v| format!("{v:.2}"))
    ));
    measured.report(report);
    if let Some(reason) = outs.iter().find_map(|o| o.failed.as_deref()) {
        report.line(format!("first failure   {reason}"));
    }
    report.check(
        failed == 0 && failed_connects == 0,
        format!("{failed} connections failed"),
    );
    report.check(
        lost == 0,
        format!("{lost} deliveries lost on {conns_with_loss} connections"),
    );
    report.check(
        duplicated == 0,
        format!("{duplicated} deliveries duplicated"),
    );
    report.check(
        unexpected == 0,
        format!("{unexpected} deliveries of messages never acked"),
    );
    report.check(
        sum(|o| o.order_violations) == 0,
        "messages out of id order".into(),
    );
    report.check(
        sum(|o| o.ack_id_mismatches) == 0,
        "a retried send got a different id".into(),
    );
    report.check(
        sum(|o| o.unacked_at_end) == 0,
        format!("{} sends never acked", sum(|o| o.unacked_at_end)),
    );
    report.check(
        sum(|o| o.errors) == 0,
        format!("{} error frames", sum(|o| o.errors)),
    );
}

/// Size of the intersection of two sorted, deduplicated lists.
fn count_common(a: &[i64], b: &[i64]) -> usize {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common
}
