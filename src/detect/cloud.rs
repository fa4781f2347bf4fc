//! The cloud detector's wire format.
//!
//! Request (up, QoS 0 — a stale request is of no use after the deadline):
//! `{"id","scene","deadline_ms","timestamp","frame_id","image":{"format":"jpeg",
//! "width","height","data":"<base64>"},"camera":{"fx","fy","cx","cy"}?,"pose":{…}?}`.
//!
//! Response (down): `{"id":"<request id>","detections":[{"class":"apple","score":0.93,
//! "box":[x1,y1,x2,y2]}],"model_version":"…"}` with boxes in pixels of the image sent,
//! or `{"id","error":"…"}`. Anything else is a failed answer that names what was wrong.

use base64::Engine as _;
use serde_json::{json, Value};

use super::local::Found;

pub struct CloudRequest<'a> {
    pub id: &'a str,
    pub scene: &'a str,
    pub deadline_ms: u64,
    pub timestamp_ms: u64,
    pub frame_id: &'a str,
    pub jpeg: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub camera: Option<super::frame::Intrinsics>,
    /// The robot's latest pose message, as JSON.
    pub pose: Option<&'a Value>,
}

pub fn request_json(r: &CloudRequest<'_>) -> Vec<u8> {
    let mut v = json!({
        "id": r.id,
        "scene": r.scene,
        "deadline_ms": r.deadline_ms,
        "timestamp": r.timestamp_ms,
        "frame_id": r.frame_id,
        "image": {
            "format": "jpeg",
            "width": r.width,
            "height": r.height,
            "data": base64::engine::general_purpose::STANDARD.encode(r.jpeg),
        },
    });
    if let Some(p) = r.pose {
        v["pose"] = p.clone();
    }
    if let Some(k) = r.camera {
        v["camera"] = json!({"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
                             "width": k.width, "height": k.height});
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The request id a response is for, if it names one.
pub fn response_id(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

/// A valid answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudAnswer {
    pub found: Vec<Found>,
    pub model_version: Option<String>,
}

/// Checks a response and converts its boxes from the sent image (`sent_w` x `sent_h`)
/// to the source image (`src_w` x `src_h`).
pub fn parse_response(
    payload: &[u8],
    sent: (usize, usize),
    src: (usize, usize),
) -> Result<CloudAnswer, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("response is not JSON: {e}"))?;
    if let Some(e) = v.get("error") {
        let text = e.as_str().map_or_else(|| e.to_string(), str::to_owned);
        return Err(format!("the cloud detector reported an error: {text}"));
    }
    let list = v
        .get("detections")
        .and_then(Value::as_array)
        .ok_or("response has no \"detections\" list")?;
    let (kx, ky) = (
        src.0 as f32 / sent.0.max(1) as f32,
        src.1 as f32 / sent.1.max(1) as f32,
    );
    let mut found = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let class = d
            .get("class")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("detections[{i}].class must be a non-empty string"))?;
        let score = d
            .get("score")
            .and_then(Value::as_f64)
            .filter(|s| (0.0..=1.0).contains(s))
            .ok_or_else(|| format!("detections[{i}].score must be a number from 0 to 1"))?;
        let b: Vec<f64> = d
            .get("box")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let ok = b.len() == 4
            && b.iter().all(|x| x.is_finite())
            && b[2] >= b[0]
            && b[3] >= b[1]
            && b[0] >= -1.0
            && b[1] >= -1.0
            && b[2] <= sent.0 as f64 + 1.0
            && b[3] <= sent.1 as f64 + 1.0;
        if !ok {
            return Err(format!(
                "detections[{i}].box must be [x1, y1, x2, y2] inside the {}x{} image sent",
                sent.0, sent.1
            ));
        }
        let clip = |x: f64, max: usize| (x.max(0.0) as f32).min(max as f32);
        found.push(Found {
            class_id: 0,
            class_name: class.to_owned(),
            score: score as f32,
            bbox: [
                clip(b[0], sent.0) * kx,
                clip(b[1], sent.1) * ky,
                clip(b[2], sent.0) * kx,
                clip(b[3], sent.1) * ky,
            ],
        });
    }
    Ok(CloudAnswer {
        found,
        model_version: v
            .get("model_version")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_validated_and_scaled_to_the_source_image() {
        let a = parse_response(
            br#"{"id":"r1","detections":[{"class":"apple","score":0.9,"box":[10,20,30,40]}],"model_version":"c-7"}"#,
            (320, 240),
            (640, 480),
        )
        .unwrap();
        assert_eq!(a.found[0].bbox, [20.0, 40.0, 60.0, 80.0]);
        assert_eq!(a.found[0].class_name, "apple");
        assert_eq!(a.model_version.as_deref(), Some("c-7"));
        for (payload, want) in [
            (&b"{nope"[..], "response is not JSON"),
            (br#"{"id":"r1"}"#, "no \"detections\" list"),
            (
                br#"{"id":"r1","detections":[{"class":"a","score":1.5,"box":[0,0,1,1]}]}"#,
                "detections[0].score",
            ),
            (
                br#"{"id":"r1","detections":[{"class":"a","score":0.5,"box":[5,0,1,1]}]}"#,
                "detections[0].box",
            ),
            (
                br#"{"id":"r1","detections":[{"score":0.5,"box":[0,0,1,1]}]}"#,
                "detections[0].class",
            ),
            (
                br#"{"id":"r1","error":"model overloaded"}"#,
                "reported an error: model overloaded",
            ),
        ] {
            let e = parse_response(payload, (320, 240), (320, 240)).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(response_id(br#"{"id":"x"}"#).as_deref(), Some("x"));
        assert_eq!(response_id(b"[1]"), None);
    }
}
