use std::time::Duration;

use bytes::Bytes;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use super::*;

#[test]
fn config_has_vllms_shape_and_defaults() {
    let c = KvEventsConfig::parse("{}").unwrap();
    assert_eq!(
        c,
        KvEventsConfig {
            enable_kv_cache_events: false,
            publisher: None,
            endpoint: "tcp://*:5557".into(),
            replay_endpoint: None,
            buffer_steps: 10_000,
            hwm: 100_000,
            max_queue_size: 100_000,
            topic: String::new(),
        }
    );
    assert!(!c.publishes());
    let on = KvEventsConfig::parse(
        r#"{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",
            "replay_endpoint": "tcp://*:5558", "buffer_steps": 10, "hwm": 100000,
            "max_queue_size": 5, "topic": "kv@pod@model"}"#,
    )
    .unwrap();
    assert!(on.publishes() && on.binds());
    assert!(KvEventsConfig::parse(r#"{"enable_kv_cache_events": true}"#)
        .unwrap()
        .publishes());
    let null = KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "publisher": "null"}"#);
    assert!(!null.unwrap().publishes());
    assert!(!KvEventsConfig::parse(r#"{"endpoint": "tcp://epp:5557"}"#)
        .unwrap()
        .binds());
}

#[test]
fn config_errors_name_the_field() {
    for (json, needle) in [
        (r#"{"enable_kv_cache_events": true, "colour": 1}"#, "colour"),
        (r#"{"publisher": "kafka"}"#, "publisher"),
        (r#"{"endpoint": "ipc:///tmp/x"}"#, "endpoint"),
        (r#"{"replay_endpoint": "inproc://x"}"#, "replay_endpoint"),
        (r#"{"hwm": 10}"#, "hwm"),
        (r#"{"max_queue_size": 0}"#, "max_queue_size"),
        (r#"{"buffer_steps": -1}"#, "buffer_steps"),
        ("not json", "--kv-events-config"),
    ] {
        let e = KvEventsConfig::parse(json).unwrap_err().to_string();
        assert!(e.contains(needle), "{json}: {e}");
    }
}

fn settings(endpoint: String, replay: bool, max_queue_size: usize) -> KvEventsSettings {
    KvEventsSettings {
        config: KvEventsConfig {
            enable_kv_cache_events: true,
            publisher: None,
            endpoint,
            replay_endpoint: replay.then(|| "tcp://127.0.0.1:0".to_string()),
            buffer_steps: 8,
            hwm: 100_000,
            max_queue_size,
            topic: "kv@pod@m".into(),
        },
        format: WireFormat::Map,
        hash_algo: HashAlgo::Sha256Cbor,
        hash_seed: Some("0".into()),
    }
}

fn removed(h: u64) -> Vec<KvEvent> {
    vec![KvEvent::Removed {
        block_hashes: vec![h],
    }]
}

/// A subscriber that binds (the llm-d indexer's layout) receives `[topic, seq, payload]`
/// frames from a publisher that connects to it; the replay socket resends kept batches.
#[test]
fn publishes_frames_and_replays() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sub = SubSocket::new();
        let ep = sub.bind("tcp://127.0.0.1:0").await.unwrap();
        sub.subscribe("kv@").await.unwrap();
        let metrics = Metrics::default();
        let p =
            KvEventPublisher::start(&settings(ep.to_string(), true, 16), "CPU", &metrics).unwrap();
        // The connection and the subscription take a moment; publish until one arrives.
        let first = loop {
            p.publish(removed(1));
            match tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
                Ok(m) => break m.unwrap().into_vec(),
                Err(_) => continue,
            }
        };
        assert_eq!(first.len(), 3);
        assert_eq!(&first[0][..], b"kv@pod@m");
        let seq = u64::from_be_bytes(first[1][..].try_into().unwrap());
        let mut want = Vec::new();
        encode_batch(&mut want, 0.0, &removed(1), WireFormat::Map, "CPU");
        // Everything after the timestamp (9 bytes after the array head) is fixed.
        assert_eq!(&first[2][10..], &want[10..]);
        p.publish(removed(2));
        let mut tail = Vec::new();
        encode_batch(&mut tail, 0.0, &removed(2), WireFormat::Map, "CPU");
        // Batches of the first loop may still arrive before it; sequence numbers never skip.
        let mut last = seq;
        loop {
            let next = sub.recv().await.unwrap().into_vec();
            let s = u64::from_be_bytes(next[1][..].try_into().unwrap());
            assert_eq!(s, last + 1);
            last = s;
            if next[2][10..] == tail[10..] {
                break;
            }
        }

        let mut dealer = DealerSocket::new();
        dealer
            .connect(p.bound().replay.as_ref().unwrap())
            .await
            .unwrap();
        let req = vec![Bytes::new(), Bytes::copy_from_slice(&seq.to_be_bytes())];
        dealer
            .send(ZmqMessage::try_from(req).unwrap())
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let f = dealer.recv().await.unwrap().into_vec();
            assert!(f[0].is_empty(), "the empty delimiter comes first");
            if f[2].is_empty() {
                assert_eq!(&f[1][..], &[0xff; 8], "the end marker is seq -1");
                break;
            }
            got.push(u64::from_be_bytes(f[1][..].try_into().unwrap()));
        }
        assert_eq!(got, (seq..=last).collect::<Vec<_>>());
        assert!(metrics.kv_events_published.get() >= 2);
        assert_eq!(metrics.kv_events_dropped.get(), 0);
        drop(p);
    });
}

/// The engine side never blocks: a batch that finds the queue (`max_queue_size`) full is
/// dropped and counted, and every batch is either sent or counted as dropped.
#[test]
fn a_full_queue_drops_without_blocking() {
    let metrics = Metrics::default();
    // Connects to a port nobody listens on (a PUB socket then sends into the void).
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("tcp://{}", unused.local_addr().unwrap());
    drop(unused);
    let p = KvEventPublisher::start(&settings(ep, false, 2), "GPU", &metrics).unwrap();
    let t = std::time::Instant::now();
    for i in 0..1000 {
        p.publish(removed(i));
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    // A publisher thread sends far slower than a loop of `try_send`s fills a queue of 2 (how
    // much slower depends on the machine's load, so only "some" is asserted).
    assert!(metrics.kv_events_dropped.get() > 0);
    drop(p);
    assert_eq!(
        metrics.kv_events_dropped.get() + metrics.kv_events_published.get(),
        1000
    );
}

#[test]
fn a_taken_port_is_a_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = settings("tcp://127.0.0.1:1".into(), false, 2);
    s.config.replay_endpoint = Some(format!("tcp://{}", taken.local_addr().unwrap()));
    let e = KvEventPublisher::start(&s, "CPU", &Metrics::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("replay_endpoint"), "{e}");
}

/// Without PYTHONHASHSEED the seed is random (vLLM's os.urandom), so two engines disagree; with
/// it, they agree.
#[test]
fn unseeded_hashes_differ_seeded_agree() {
    let mut s = settings("tcp://127.0.0.1:1".into(), false, 1);
    s.hash_seed = None;
    assert_ne!(s.hasher().none_hash(), s.hasher().none_hash());
    s.hash_seed = Some("42".into());
    assert_eq!(s.hasher().none_hash(), s.hasher().none_hash());
}
