//! The outbox stage's own decisions (a cluster gateway that lost the broker).

use super::*;
use crate::config::Mode;
use crate::messages::{DeviceStatusOut, HearsOut, OwnerClaim, OwnerOut};
use crossbeam_channel::bounded;

const MAC: &str = "AA:BB:CC:00:02:01";

fn cluster_stage() -> OutboxStage {
    let mut config = Config::default();
    config.cluster.enabled = true;
    config.gateway.id = "g2".into();
    let renderer = Renderer::for_config(&config);
    let ha = homeassistant::HomeAssistant::new(
        &config.homeassistant,
        renderer.topics.clone(),
        &config.gateway.id,
    );
    let options = rumqttc::MqttOptions::new("test", "127.0.0.1", 1883);
    let (client, _connection) = Client::new(options, 64);
    OutboxStage::new(
        &config,
        client,
        Some(ha),
        Outbox::new(100, 3),
        renderer,
        Instant::now(),
    )
    .with_cluster(crate::ble::Inbox::new().facts(), bounded(1).0)
}

fn status() -> Outbound {
    Outbound::DeviceStatus(DeviceStatusOut {
        mac: MAC.parse().unwrap(),
        at: Utc::now(),
        reachable: true,
        model: crate::devices::Model::by_name("BM6"),
        vehicle_id: None,
        error: None,
        last_reading_at: None,
        rssi: None,
        consecutive_failures: 0,
        mode: Mode::Poll,
        name: "Cart front".into(),
        poll_interval: 5,
        reading: None,
    })
}

fn config_topic() -> &'static str {
    "homeassistant/device/battery_hawk_aabbcc000201/config"
}

#[test]
fn a_cluster_gateway_that_lost_the_broker_re_publishes_nothing_it_let_go_of() {
    let mut stage = cluster_stage();
    stage.accept(
        &Outbound::Owner(OwnerOut {
            mac: MAC.parse().unwrap(),
            claim: Some(OwnerClaim {
                rssi: Some(-65),
                since: Utc::now(),
            }),
            clear: false,
        }),
        true,
    );
    stage.accept(&status(), true);
    stage.accept(
        &Outbound::Hears(HearsOut {
            at: Utc::now(),
            monitors: Vec::new(),
        }),
        true,
    );
    assert_eq!(stage.retained.len(), 3, "{:?}", stage.retained.keys());
    let (ack, _acked) = bounded(1);
    stage.on_net(Net::Down {
        why: "keepalive timeout".into(),
        loss: Loss::Closed,
        uptime: None,
        ack,
    });
    // The BLE stage let go of everything: another gateway may own the monitor by the next connection,
    // so neither its owner claim nor its status nor its discovery config may be re-published then.
    assert_eq!(
        stage.retained.keys().collect::<Vec<_>>(),
        ["battery_hawk/gateway/g2/hears"]
    );
    let configs = stage.ha.as_ref().unwrap().announce_all();
    assert!(
        configs.iter().all(|m| m.topic != config_topic()),
        "{:?}",
        configs.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    // Taken again: its next status announces it afresh.
    stage.accept(&status(), true);
    let configs = stage.ha.as_ref().unwrap().announce_all();
    assert!(configs.iter().any(|m| m.topic == config_topic()));
}
