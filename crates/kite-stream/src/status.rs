//! What exec and attach say on their error channel when the command ends, as upstream's
//! kubelet writes it (`remotecommand`): a `metav1.Status` in JSON for v4 and later, the
//! message alone before (and nothing on success).

use serde_json::{json, Value};

/// The command exited 0.
pub fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// The command exited with `code` (not 0); `cmd` as the client gave it.
pub fn exit_code(cmd: &[String], code: i64) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            cmd.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The command could not run (upstream's `NewInternalError`).
pub fn internal(err: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {err}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": err}]},
        "code": 500,
    })
}

/// The bytes for the error channel: the JSON Status (v4 and later), or, before v4, the
/// message of a failure and nothing for success.
pub fn encode(status: &Value, json_status: bool) -> Vec<u8> {
    if json_status {
        return serde_json::to_vec(status).unwrap_or_default();
    }
    if status["status"] == "Success" {
        return Vec::new();
    }
    status["message"]
        .as_str()
        .unwrap_or_default()
        .as_bytes()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_read_as_upstream() {
        let s = exit_code(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(
            String::from_utf8(encode(&s, true)).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            encode(&s, false),
            b"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert!(encode(&success(), false).is_empty());
    }
}
