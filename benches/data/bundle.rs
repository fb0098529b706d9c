//! The searchset Bundle the validation and DLP benches share.

/// A searchset Bundle of about `target` bytes: one Patient to two Observations.
pub fn bundle(target: usize, patient: &str, observation: &str) -> String {
    let mut s = String::from(
        r#"{"resourceType":"Bundle","id":"search","type":"searchset","total":0,"link":[{"relation":"self","url":"https://example.org/fhir/Observation?_include=Observation:subject"}],"entry":["#,
    );
    let mut i = 0usize;
    while s.len() < target {
        if i > 0 {
            s.push(',');
        }
        let (res, rt) = match i % 3 {
            0 => (
                patient
                    .trim()
                    .replace("\"example\"", &format!("\"pat-{i}\"")),
                "Patient",
            ),
            _ => (
                observation.trim().replace("ID", &i.to_string()),
                "Observation",
            ),
        };
        s.push_str(&format!(
            r#"{{"fullUrl":"https://example.org/fhir/{rt}/{i}","resource":{res},"search":{{"mode":"match"}}}}"#
        ));
        i += 1;
    }
    s.push_str("]}");
    s
}
