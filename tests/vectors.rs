//! Replays every capture in `tests/vectors/<model>/*.txt` through the public decode API, and keeps the fuzz
//! seed corpus (`fuzz/corpus/decode_<model>/`) in step with them. File format: `tests/vectors/README.md`.

#[path = "../fuzz/fuzz_targets/decoder.rs"]
mod fuzz_decoder;

use battery_hawk::decode;
use battery_hawk::devices::{self, DecodeError, Decoded, Measurement, Model, Source};
use battery_hawk::mac::Mac;
use battery_hawk::messages::{FleetEvent, RawFrame};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// One capture file.
struct Vector {
    path: PathBuf,
    model: Model,
    source: Source,
    mac: Mac,
    data: Vec<u8>,
    plain: Vec<String>,
    expect: Vec<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn parse(path: &Path) -> Result<Vector, String> {
    let model_dir = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    let model = model_dir
        .and_then(Model::by_name)
        .ok_or_else(|| format!("directory {model_dir:?} is not a model"))?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (mut provenance, mut source, mut mac, mut data) = (None, None, None, None);
    let (mut plain, mut expect) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .map(|(k, v)| (k.trim(), v.trim().to_string()))
            .ok_or_else(|| format!("line {}: expected `key: value`", n + 1))?;
        match key {
            "provenance" => provenance = Some(value),
            "source" => source = Some(value),
            "mac" => mac = Some(value.parse::<Mac>().map_err(|e| e.to_string())?),
            "data" => data = Some(devices::parse_hex(&value)?),
            "plain" => plain.push(value),
            "expect" => expect.push(value),
            other => return Err(format!("line {}: unknown key `{other}`", n + 1)),
        }
    }
    provenance
        .filter(|p| !p.is_empty())
        .ok_or("no `provenance:` line")?;
    let source = match source.as_deref() {
        Some("gatt") => Source::Gatt,
        Some("advertisement") => Source::Advertisement,
        Some("ibeacon") => Source::Ibeacon,
        other => {
            return Err(format!(
                "source {other:?} is not gatt|advertisement|ibeacon"
            ));
        }
    };
    if expect.is_empty() {
        return Err("no `expect:` line".into());
    }
    Ok(Vector {
        path: path.to_path_buf(),
        model,
        source,
        mac: mac.unwrap_or(Mac([0; 6])),
        data: data.ok_or("no `data:` line")?,
        plain,
        expect,
    })
}

fn vectors() -> Vec<Vector> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root())
        .expect("tests/vectors")
        .map(|d| d.expect("entry").path())
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).expect("a model directory"))
        .map(|f| f.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| parse(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// A measurement as the vector files spell it: the four values, then the counters by name.
fn to_json(m: &Measurement) -> Value {
    let mut o = Map::new();
    o.insert("voltage".into(), json!(m.voltage));
    o.insert("temperature".into(), json!(m.temperature));
    o.insert("state_of_charge".into(), json!(m.state_of_charge));
    o.insert("state".into(), json!(m.state));
    for (name, value) in &m.counters {
        o.insert((*name).into(), json!(value));
    }
    Value::Object(o)
}

fn outcome(r: &Result<(Vec<u8>, Decoded), DecodeError>) -> (String, Option<Value>) {
    match r {
        Ok((_, Decoded::Reading(m))) => ("reading".into(), Some(to_json(m))),
        Ok((_, Decoded::NotReading(kind))) => (format!("skip {}", kind.as_str()), None),
        Err(e) => (format!("reject {}", e.kind()), None),
    }
}

#[test]
fn every_vector_decodes_as_expected() {
    let all = vectors();
    assert!(all.len() >= 50, "only {} vectors found", all.len());
    for v in &all {
        let name = v.path.display();
        let got = devices::decode_notification(v.model, v.source, v.mac, &v.data);
        assert_eq!(got.len(), v.expect.len(), "{name}: one expect per block");
        for (i, (r, want)) in got.iter().zip(&v.expect).enumerate() {
            let (kind, json) = outcome(r);
            match want.split_once(' ') {
                Some(("reading", body)) => {
                    let want: Value = serde_json::from_str(body)
                        .unwrap_or_else(|e| panic!("{name}: expect {i}: {e}"));
                    assert_eq!(kind, "reading", "{name}: block {i}");
                    assert_eq!(json.unwrap(), want, "{name}: block {i}");
                }
                _ => assert_eq!(&kind, want, "{name}: block {i}"),
            }
            if let (Ok((plain, _)), Some(p)) = (r, v.plain.get(i)) {
                assert_eq!(&devices::to_hex(plain), p, "{name}: plain {i}");
            }
        }
    }
}

#[test]
fn the_decode_stage_gives_the_same_outcomes() {
    for v in vectors() {
        let d = decode::decode(RawFrame {
            mac: v.mac,
            model: v.model,
            source: v.source,
            data: v.data.clone(),
            rssi: None,
            received_at: chrono::Utc::now(),
        });
        let count = |p: &str| v.expect.iter().filter(|e| e.starts_with(p)).count();
        let readings = d
            .events
            .iter()
            .filter(|e| matches!(e, FleetEvent::Reading(_)))
            .count();
        let rejected = d
            .events
            .iter()
            .filter(|e| matches!(e, FleetEvent::Rejected { .. }))
            .count();
        let name = v.path.display();
        assert_eq!(readings, count("reading"), "{name}");
        assert_eq!(rejected, count("reject"), "{name}");
        assert_eq!(d.skipped.len(), count("skip"), "{name}");
        for e in &d.events {
            if let FleetEvent::Reading(r) = e {
                assert_eq!(r.source, v.source, "{name}");
                assert_eq!(
                    r.measurement.voltage.is_none(),
                    v.source == Source::Ibeacon,
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn the_spec_vectors_are_all_there() {
    let all = vectors();
    let data: Vec<String> = all.iter().map(|v| devices::to_hex(&v.data)).collect();
    for spec in [
        "71543b749f6f614dd6333f21546f681d",
        "8d15e48e2f10fdb9536e0a95bd871c05",
        "319b051ed6943b2a6919cc278b4220ef",
        "8ae0358523fe154976de18fc102eb1d4",
        "0df8721e454fa209648a87910814dad1",
        "e18911ed76d18e5ba793d5574f205b61",
        "ee6e22884c11f151c1760465b2fe9003",
        "0215655f83caae16a10a702e31f30d58dd82f441423144",
    ] {
        assert!(
            data.contains(&spec.to_string()),
            "SPEC vector {spec} has no file"
        );
    }
}

/// The fuzz seed for a vector: byte 0 picks the source (0 GATT, 1 advertisement, 2 iBeacon), bytes 1–6
/// the address, then the data (see `fuzz/fuzz_targets/decoder.rs`).
fn seed(v: &Vector) -> Vec<u8> {
    let pick = match v.source {
        Source::Gatt => 0,
        Source::Advertisement => 1,
        Source::Ibeacon => 2,
    };
    let mut s = vec![pick];
    s.extend(v.mac.0);
    s.extend(&v.data);
    s
}

/// Every vector is in the fuzz seed corpus. `BATTERY_HAWK_SEED_CORPUS=1 cargo test --test vectors` writes
/// the missing or stale seeds (then commit them).
#[test]
fn the_fuzz_corpus_is_seeded_from_the_vectors() {
    let write = std::env::var_os("BATTERY_HAWK_SEED_CORPUS").is_some();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut stale = Vec::new();
    for v in vectors() {
        let dir = corpus.join(format!("decode_{}", v.model.name().to_lowercase()));
        let file = dir.join(v.path.file_stem().expect("a file name"));
        let want = seed(&v);
        if std::fs::read(&file).ok().as_ref() == Some(&want) {
            continue;
        }
        if write {
            std::fs::create_dir_all(&dir).expect("corpus directory");
            std::fs::write(&file, &want).expect("corpus file");
        } else {
            stale.push(file.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds missing or stale (run BATTERY_HAWK_SEED_CORPUS=1 cargo test --test vectors): {stale:?}"
    );
}

/// The seed corpus runs through the fuzz targets' own check without a panic.
#[test]
fn the_fuzz_corpus_passes_the_fuzz_check() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut n = 0;
    for m in devices::ALL {
        let dir = corpus.join(format!("decode_{}", m.name().to_lowercase()));
        for f in std::fs::read_dir(&dir).expect("a corpus directory") {
            let bytes = std::fs::read(f.expect("entry").path()).expect("a seed");
            fuzz_decoder::check(m.name(), &bytes);
            n += 1;
        }
    }
    assert!(n >= 50, "only {n} seeds");
}
