//! What the robot reports about an update, in the formats the platforms and the robot's
//! own tooling read: Aliyun progress, the upgrade result, the upgrade log.

use serde_json::{json, Value};

use super::installer::OtaEvent;
use super::machine::FailStep;

/// Aliyun progress: `{"id","params":{"step","desc","module"}}`; `desc` at most 128 characters.
pub fn aliyun_progress(id: u64, step: i32, desc: &str, module: &str) -> Value {
    let desc: String = desc.chars().take(128).collect();
    json!({"id": id.to_string(), "params": {"step": step.to_string(), "desc": desc, "module": module}})
}

/// The robot's upgrade result report.
pub fn result(event: &OtaEvent) -> Option<Value> {
    let (progress, result, error_type, info, failed) = match event {
        OtaEvent::Committed { .. } => (100, 0, 0, String::new(), vec![]),
        OtaEvent::Failed {
            job,
            step,
            reason,
            current,
            ..
        } => {
            let error_type = match step {
                FailStep::Upgrade => 1,
                FailStep::Download => 2,
                FailStep::Verify => 3,
                FailStep::Install => 4,
            };
            (
                -step.aliyun_step().abs(),
                1,
                error_type,
                reason.clone(),
                vec![
                    json!({"COMPONENT_NAME": job.module, "CURRENT_VERSION": current.clone().unwrap_or_default(), "ROLLBACK_RESULT": 1}),
                ],
            )
        }
        OtaEvent::RolledBack {
            job,
            reason,
            restored,
            current,
            ..
        } => (
            -1,
            1,
            1,
            reason.clone(),
            vec![
                json!({"COMPONENT_NAME": job.module, "CURRENT_VERSION": current.clone().unwrap_or_default(),
                        "ROLLBACK_RESULT": if *restored { 1 } else { 0 }}),
            ],
        ),
        _ => return None,
    };
    let info: String = info.chars().take(256).collect();
    Some(json!({
        "PROGRESS": progress,
        "RESULT": result,
        "ERROR_TYPE": error_type,
        "ERROR_INFO": info,
        "UPGRADE_FAILED_COMPONENT_ARRAY": failed,
    }))
}

/// The upgrade log: `{"FILE_NAME","LOG_CONTENT"}`.
pub fn log(event: &OtaEvent, file_name: &str) -> Option<Value> {
    let lines = match event {
        OtaEvent::Committed { log, .. }
        | OtaEvent::Failed { log, .. }
        | OtaEvent::RolledBack { log, .. } => log,
        _ => return None,
    };
    Some(json!({"FILE_NAME": file_name, "LOG_CONTENT": lines.join("\n")}))
}
