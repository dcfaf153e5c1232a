//! The BLE thread's event loop: the only place where the [`Scheduler`] meets a [`Radio`].
//!
//! Owns: waiting (on a command, a radio event or the scheduler's next deadline — never on a deadline in
//! the past), feeding what happened to the scheduler with the current instant, carrying out its actions on
//! the radio, and handing frames and notices to the decode stage. Must never: decide anything itself.

use super::Command;
use super::radio::{Radio, RadioEvent};
use super::scheduler::{Action, Scheduler};
use crate::messages::{BleEvent, Notice};
use crossbeam_channel::Sender;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;

/// How long stop waits for the radio to close its links.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Run `scheduler` on `radio` until told to stop; every frame and notice goes to `tx`.
pub(super) async fn drive<R: Radio>(
    mut scheduler: Scheduler,
    mut radio: R,
    tx: Sender<BleEvent>,
    mut commands: Receiver<Command>,
) {
    let send = |e: BleEvent| {
        if tx.send(e).is_err() {
            log::debug!("decode stage gone; dropping a BLE event");
        }
    };
    scheduler.tick(Instant::now());
    let mut actions = Vec::new();
    loop {
        scheduler.swap_actions(&mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Emit(e) => send(e),
                other => radio.act(other).await,
            }
        }
        let deadline = scheduler.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Reconfigure(config)) => {
                    radio.reconfigure(&config);
                    scheduler.reconfigure(config, Instant::now());
                }
                Some(Command::Stop { reason }) => {
                    scheduler.stop();
                    scheduler.swap_actions(&mut actions);
                    for action in actions.drain(..) {
                        match action {
                            Action::Emit(e) => send(e),
                            other => radio.act(other).await,
                        }
                    }
                    if tokio::time::timeout(SHUTDOWN_LIMIT, radio.shutdown()).await.is_err() {
                        log::warn!("closing the Bluetooth links took over {} s", SHUTDOWN_LIMIT.as_secs());
                    }
                    send(BleEvent::Notice(Notice::Stopping { reason }));
                    return;
                }
                Some(Command::Cluster(fact)) => scheduler.cluster_fact(fact, Instant::now()),
                None => return,
            },
            event = radio.next() => {
                let now = Instant::now();
                match event {
                    RadioEvent::Available(state) => scheduler.adapter_available(state, now),
                    RadioEvent::Lost(why) => {
                        if scheduler.adapter_up() {
                            log::warn!("Bluetooth unavailable: {why}");
                        } else {
                            log::debug!("Bluetooth still unavailable: {why}");
                        }
                        scheduler.adapter_lost(now);
                    }
                    RadioEvent::ScanFailed(why) => {
                        log::warn!("cannot start a scan (trying again shortly): {why}");
                        scheduler.scan_failed(now);
                    }
                    RadioEvent::Advert(mac) => {
                        if scheduler.wants_details(mac, now)
                            && let Some(heard) = radio.details(mac).await
                        {
                            scheduler.heard(heard, Instant::now());
                            if scheduler.is_target(mac) {
                                radio.watch(mac).await;
                            }
                        }
                    }
                    RadioEvent::Heard(heard) => {
                        if scheduler.wants_details(heard.mac, now) {
                            scheduler.heard(heard, now);
                        }
                    }
                    RadioEvent::PollDone(mac, outcome) => scheduler.poll_done(mac, outcome, now),
                    RadioEvent::StreamFrame(frame) => scheduler.stream_frame(frame, now),
                    RadioEvent::StreamHistory(mac, h) => scheduler.stream_history(mac, &h, now),
                    RadioEvent::StreamEnded(mac, error) => scheduler.stream_ended(mac, error, now),
                }
            }
            () = sleep => scheduler.tick(Instant::now()),
        }
    }
}
