//! Routing preview for the CLI (`switchyard preview`, `switchyard route`)
//! and the API (`POST /v1/routing/preview`): requests in the shapes users
//! have them (OpenAI chat request bodies, OpenAI Batch API lines, chat-log
//! exports, the audit store) become the router's [`RouteRequest`]s, the
//! same ones the server builds, and [`switchyard_router::preview`]'s report
//! comes out as a terminal table, JSON, or a self-contained HTML page
//! (inline SVG, no scripts, readable offline).
//!
//! No model runs: prompt tokens are estimated from characters (about four
//! a token, plus the template's per-message overhead), as the dry run does.

use std::fmt::Write as _;

use serde_json::Value;
use switchyard_router::preview::{FrontierPoint, Summary};
use switchyard_router::{Classifier, ModelProfile, Objective, Policy, PreviewReport, RouteRequest};

use crate::error::ApiError;
use crate::job::ValidatedRequest;
use crate::{openai, routed};

/// A chat request as the preview sees it: what routing needs, and what
/// serving it needs.
pub struct ChatToRoute {
    pub route: RouteRequest,
    pub messages: Vec<switchyard_engine::ChatMessage>,
    pub max_tokens: Option<usize>,
}

/// What routing a request needs besides the request itself.
pub struct RouterView<'a> {
    pub profiles: &'a [ModelProfile],
    pub classifier: &'a Classifier,
    pub default_objective: Objective,
    pub policy: Policy,
}

/// Fields of a chat-log export line that are not part of the request.
const LOG_FIELDS: &[&str] = &[
    "response",
    "choices",
    "usage",
    "id",
    "created",
    "object",
    "system_fingerprint",
    "completion",
];

impl RouterView<'_> {
    /// One request from a JSON value: a chat request body, an OpenAI Batch
    /// API line (`{"custom_id", "method", "url", "body"}`), or a chat-log
    /// line (a body with its response and usage beside it, or under
    /// `"request"`).
    pub fn route_request(&self, value: &Value) -> Result<RouteRequest, ApiError> {
        self.chat_request(value).map(|c| c.route)
    }

    /// As [`RouterView::route_request`], with the request's messages and
    /// length (what `--execute` serves).
    pub fn chat_request(&self, value: &Value) -> Result<ChatToRoute, ApiError> {
        let mut body = match value {
            Value::Object(o) if o.get("body").is_some_and(Value::is_object) => o["body"].clone(),
            Value::Object(o) if o.get("request").is_some_and(Value::is_object) => {
                o["request"].clone()
            }
            Value::Object(_) => value.clone(),
            _ => return Err(ApiError::invalid("a request must be a JSON object")),
        };
        if let Value::Object(o) = &mut body {
            for field in LOG_FIELDS {
                o.remove(*field);
            }
            // A log or a batch names the model it was sent to; routing
            // decides here whatever it was (`auto:<objective>` keeps its
            // objective).
            let routed = o
                .get("model")
                .and_then(Value::as_str)
                .is_some_and(|m| m == "auto" || m.starts_with("auto:"));
            if !routed {
                o.insert("model".into(), Value::String("auto".into()));
            }
        }
        let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
        let req: openai::ChatRequest = openai::parse_body(&bytes, openai::CHAT_FIELDS)?;
        let v = ValidatedRequest::chat(req)?;
        let messages = v.messages();
        let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
        let estimate = chars.div_ceil(4) + 8 * messages.len() + 8;
        Ok(ChatToRoute {
            route: RouteRequest {
                classification: routed::classify(self.classifier, messages),
                prompt_tokens: vec![("*".into(), estimate)],
                max_tokens: v.max_tokens,
                needs_tools: v.needs_tools,
                needs_json: v.needs_json,
                options: v.routing_options(),
                default_objective: self.default_objective,
                policy: self.policy,
            },
            messages: messages.to_vec(),
            max_tokens: v.max_tokens,
        })
    }

    /// Every non-empty line of a JSONL text; a line that is not a request
    /// is reported with its number (from 1) and left out.
    pub fn requests_from_jsonl(&self, text: &str) -> (Vec<ChatToRoute>, Vec<(usize, String)>) {
        let (mut ok, mut errors) = (Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(line)
                .map_err(|e| ApiError::invalid(format!("not JSON: {e}")))
                .and_then(|v| self.chat_request(&v));
            match parsed {
                Ok(r) => ok.push(r),
                Err(e) => errors.push((n + 1, e.message)),
            }
        }
        (ok, errors)
    }

    /// The audit store's decisions since `since` (Unix seconds), newest
    /// `limit` first, as requests: each with its recorded classification,
    /// routing options and served token counts (the prompt's, and the
    /// completion's as its length). Records without a classification (none
    /// today) are skipped and counted.
    pub fn requests_from_audit(
        &self,
        audit: &switchyard_router::AuditLog,
        since: Option<f64>,
        limit: usize,
    ) -> Result<(Vec<RouteRequest>, usize), ApiError> {
        let records = audit
            .list(&switchyard_router::audit::Query {
                limit,
                since,
                ..Default::default()
            })
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let (mut out, mut skipped) = (Vec::new(), 0);
        for rec in records.iter().rev() {
            let d = &rec.decision;
            let classification = serde_json::from_value(d["classification"].clone());
            let options = serde_json::from_value(d["options"].clone()).unwrap_or_default();
            let Ok(classification) = classification else {
                skipped += 1;
                continue;
            };
            let o = &rec.outcome;
            out.push(RouteRequest {
                classification,
                prompt_tokens: vec![("*".into(), o.prompt_tokens.max(1))],
                max_tokens: (o.completion_tokens > 0).then_some(o.completion_tokens),
                // Records from before these were kept read as needing neither.
                needs_tools: d["needs_tools"].as_bool().unwrap_or(false),
                needs_json: d["needs_json"].as_bool().unwrap_or(false),
                options,
                default_objective: self.default_objective,
                policy: self.policy,
            });
        }
        Ok((out, skipped))
    }
}

/// The objective a whole preview sample is routed under. A cascade cannot be
/// projected: whether it escalates depends on the answers' confidence, so
/// its cost and quality are measured by `switchyard eval --compare`.
pub fn objective(name: &str) -> Result<Objective, String> {
    match Objective::parse(name) {
        Some(Objective::Cascade) => Err(format!(
            "objective `{name}` cannot be previewed: a cascade escalates on its answers' \
             confidence, which needs the answers (measure it with `switchyard eval --compare`)"
        )),
        Some(o) => Ok(o),
        None => Err(format!(
            "unknown objective `{name}` (quality, cost, latency, balanced)"
        )),
    }
}

fn usd(v: f64) -> String {
    format!("${v:.6}")
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "unknown".to_string(), f)
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

fn summary_cells(s: &Summary) -> [String; 10] {
    [
        s.requests.to_string(),
        usd(s.routed_cost_usd),
        usd(s.baseline_cost_usd),
        opt(s.cost_ratio, |r| format!("{r:.2}×")),
        opt(s.routed_quality, |q| format!("{q:.3}")),
        opt(s.baseline_quality, |q| format!("{q:.3}")),
        opt(s.quality_delta, |q| format!("{q:+.3}")),
        pct(s.routed_unknown_share),
        opt(s.routed_ms, |m| format!("{m:.0} ms")),
        opt(s.baseline_ms, |m| format!("{m:.0} ms")),
    ]
}

const SUMMARY_HEADERS: [&str; 11] = [
    "task",
    "requests",
    "cost routed",
    "cost baseline",
    "cost ratio",
    "quality routed",
    "quality baseline",
    "Δ quality (paired)",
    "unknown quality",
    "time routed",
    "time baseline",
];

fn frontier_cells(p: &FrontierPoint) -> [String; 8] {
    [
        p.objective.as_str().to_string(),
        opt(p.min_quality, |f| format!("{f:.1}")).replace("unknown", "default"),
        usd(p.cost_usd),
        opt(p.quality, |q| format!("{q:.3}")),
        pct(p.unknown_share),
        pct(p.unroutable_share),
        opt(p.ms, |m| format!("{m:.0} ms")),
        if p.pareto { "yes" } else { "" }.to_string(),
    ]
}

const FRONTIER_HEADERS: [&str; 8] = [
    "objective",
    "min quality",
    "cost",
    "quality",
    "unknown",
    "unserved",
    "time",
    "on frontier",
];

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |c: usize| {
        rows.iter()
            .map(|r| r[c].chars().count())
            .chain([headers[c].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i == 0 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{cell}", " ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// The report as terminal tables: per task and overall, where the requests
/// went, and the frontier.
pub fn render_table(r: &PreviewReport) -> String {
    let mut out = format!(
        "Routing preview: {} requests against `{}` for every request, objective {}\n\n",
        r.overall.requests,
        r.baseline,
        r.objective
            .map_or("as each request asks (else the catalog's default)", |o| o
                .as_str())
    );
    let mut rows: Vec<Vec<String>> = r
        .by_task
        .iter()
        .map(|(task, s)| {
            let mut row = vec![task.clone()];
            row.extend(summary_cells(s));
            row
        })
        .collect();
    let mut all = vec!["overall".to_string()];
    all.extend(summary_cells(&r.overall));
    rows.push(all);
    out += &table(&SUMMARY_HEADERS, &rows);
    let shares: Vec<String> = r
        .overall
        .share_by_model
        .iter()
        .map(|(m, s)| format!("{m} {}", pct(*s)))
        .collect();
    let _ = writeln!(out, "\nrouted to: {}", shares.join(", "));
    if r.overall.unroutable > 0 {
        let _ = writeln!(
            out,
            "no model could serve {} requests",
            r.overall.unroutable
        );
    }
    out += "\nQuality is the catalog's evidence for each request's task and difficulty; \
            unknown quality is counted apart, never as good.\n\nFrontier across objectives and quality floors:\n";
    let rows: Vec<Vec<String>> = r
        .frontier
        .iter()
        .map(|p| frontier_cells(p).to_vec())
        .collect();
    out += &table(&FRONTIER_HEADERS, &rows);
    if let Some(c) = &r.calibration {
        out += &format!("\n{}\n", calibration_text(c));
    }
    out
}

fn calibration_text(c: &switchyard_router::preview::Calibration) -> String {
    match c.min_quality {
        Some(f) => format!(
            "Calibration: min_quality {f:.2} under the cost objective sends {} of the sample to stronger models than the cheapest (asked: {}; unserved at that floor: {}).",
            pct(c.achieved),
            pct(c.strong_share),
            pct(c.unroutable_share)
        ),
        None => format!(
            "Calibration: no quality floor sends {} of the sample past the cheapest model; the most any floor sends is {}.",
            pct(c.strong_share),
            pct(c.achieved)
        ),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal grouped bars (one group per label, one bar per series) as SVG.
fn bars(
    title: &str,
    labels: &[String],
    series: &[(&str, &str, Vec<Option<f64>>)],
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().flatten())
        .fold(0f64, |m, &v| m.max(v));
    let scale = if max > 0.0 { 360.0 / max } else { 0.0 };
    let row_h = 14.0 * series.len() as f64 + 8.0;
    let height = 40.0 + row_h * labels.len() as f64 + 20.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="640" height="{height}" role="img" aria-label="{t}"><text x="0" y="16" font-weight="bold">{t}</text>"#,
        t = esc(title)
    );
    for (i, label) in labels.iter().enumerate() {
        let y0 = 32.0 + row_h * i as f64;
        let _ = write!(
            svg,
            r#"<text x="0" y="{}" font-size="12">{}</text>"#,
            y0 + 12.0,
            esc(label)
        );
        for (j, (_, color, values)) in series.iter().enumerate() {
            let y = y0 + 14.0 * j as f64;
            match values[i] {
                Some(v) => {
                    let _ = write!(
                        svg,
                        r#"<rect x="150" y="{y}" width="{:.1}" height="12" fill="{color}"/><text x="{:.1}" y="{}" font-size="11">{}</text>"#,
                        v * scale,
                        155.0 + v * scale,
                        y + 10.0,
                        esc(&fmt(v))
                    );
                }
                None => {
                    let _ = write!(
                        svg,
                        r##"<text x="150" y="{}" font-size="11" fill="#a00">unknown</text>"##,
                        y + 10.0
                    );
                }
            }
        }
    }
    let legend_y = height - 6.0;
    for (j, (name, color, _)) in series.iter().enumerate() {
        let x = 150.0 + 160.0 * j as f64;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{legend_y}" font-size="11">{}</text>"#,
            legend_y - 9.0,
            x + 14.0,
            esc(name)
        );
    }
    svg + "</svg>"
}

/// The frontier: cost (x) against known-quality mean (y), the baseline as
/// a cross, frontier points filled.
fn frontier_svg(r: &PreviewReport) -> String {
    let pts: Vec<(f64, f64, &FrontierPoint)> = r
        .frontier
        .iter()
        .filter_map(|p| Some((p.cost_usd, p.quality?, p)))
        .collect();
    let base = r
        .overall
        .baseline_quality
        .map(|q| (r.overall.baseline_cost_usd, q));
    let xs = pts.iter().map(|p| p.0).chain(base.map(|b| b.0));
    let ys = pts.iter().map(|p| p.1).chain(base.map(|b| b.1));
    let (x_max, y_min, y_max) = (
        xs.fold(0f64, f64::max).max(1e-12),
        ys.clone().fold(1f64, f64::min),
        ys.fold(0f64, f64::max),
    );
    let (y_lo, y_hi) = (y_min.min(y_max) - 0.02, y_max + 0.02);
    let (w, h, pad) = (560.0, 300.0, 50.0);
    let px = |x: f64| pad + x / x_max * (w - 2.0 * pad);
    let py = |y: f64| h - pad - (y - y_lo) / (y_hi - y_lo).max(1e-9) * (h - 2.0 * pad);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="cost against quality"><text x="0" y="16" font-weight="bold">Cost against quality, every objective and floor</text><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#444"/><text x="{r}" y="{lbl}" font-size="11" text-anchor="end">cost of the sample (max {})</text><text x="4" y="{pad}" font-size="11">quality</text><text x="4" y="{qlo}" font-size="10">{y_lo:.2}</text><text x="4" y="{qhi}" font-size="10">{y_hi:.2}</text>"##,
        esc(&usd(x_max)),
        b = h - pad,
        r = w - pad,
        lbl = h - pad + 30.0,
        qlo = h - pad,
        qhi = pad + 12.0,
    );
    for (x, y, p) in &pts {
        // Filled: on the frontier; grey: leaves requests unserved.
        let stroke = if p.unroutable_share > 0.0 {
            "#999"
        } else {
            "#1f77b4"
        };
        let fill = if p.pareto { stroke } else { "none" };
        let _ = write!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{stroke}"><title>{} {}: {} quality {:.3}, unknown {}, unserved {}</title></circle>"##,
            px(*x),
            py(*y),
            p.objective.as_str(),
            esc(&opt(p.min_quality, |f| format!("floor {f:.1}"))
                .replace("unknown", "default floor")),
            esc(&usd(*x)),
            y,
            pct(p.unknown_share),
            pct(p.unroutable_share)
        );
    }
    if let Some((x, y)) = base {
        let (cx, cy) = (px(x), py(y));
        let _ = write!(
            svg,
            r##"<path d="M{} {} L{} {} M{} {} L{} {}" stroke="#d62728" stroke-width="2"/><text x="{}" y="{}" font-size="11" fill="#d62728">baseline {}</text>"##,
            cx - 5.0,
            cy - 5.0,
            cx + 5.0,
            cy + 5.0,
            cx - 5.0,
            cy + 5.0,
            cx + 5.0,
            cy - 5.0,
            cx + 8.0,
            cy - 6.0,
            esc(&r.baseline)
        );
    }
    svg + "</svg>"
}

/// The report as one HTML page: the summary table, the frontier plot, cost
/// and quality by task, and where the unknowns are.
pub fn render_html(r: &PreviewReport) -> String {
    let labels: Vec<String> = r.by_task.keys().cloned().collect();
    let col = |f: &dyn Fn(&Summary) -> Option<f64>| -> Vec<Option<f64>> {
        r.by_task.values().map(f).collect()
    };
    let cost = bars(
        "Projected cost by task",
        &labels,
        &[
            ("routed", "#1f77b4", col(&|s| Some(s.routed_cost_usd))),
            ("baseline", "#d62728", col(&|s| Some(s.baseline_cost_usd))),
        ],
        &usd,
    );
    let quality = bars(
        "Expected quality by task (known evidence only)",
        &labels,
        &[
            ("routed", "#1f77b4", col(&|s| s.routed_quality)),
            ("baseline", "#d62728", col(&|s| s.baseline_quality)),
        ],
        &|q| format!("{q:.3}"),
    );
    let unknown = bars(
        "Share of requests with unknown quality",
        &labels,
        &[
            ("routed", "#1f77b4", col(&|s| Some(s.routed_unknown_share))),
            (
                "baseline",
                "#d62728",
                col(&|s| Some(s.baseline_unknown_share)),
            ),
        ],
        &pct,
    );
    let mut summary = String::from("<table><tr>");
    for h in SUMMARY_HEADERS {
        let _ = write!(summary, "<th>{}</th>", esc(h));
    }
    summary += "</tr>";
    let rows = r
        .by_task
        .iter()
        .map(|(t, s)| (t.as_str(), s))
        .chain([("overall", &r.overall)]);
    for (task, s) in rows {
        let _ = write!(summary, "<tr><td>{}</td>", esc(task));
        for c in summary_cells(s) {
            let _ = write!(summary, "<td>{}</td>", esc(&c));
        }
        summary += "</tr>";
    }
    summary += "</table>";
    let mut frontier = String::from("<table><tr>");
    for h in FRONTIER_HEADERS {
        let _ = write!(frontier, "<th>{}</th>", esc(h));
    }
    frontier += "</tr>";
    for p in &r.frontier {
        frontier += "<tr>";
        for c in frontier_cells(p) {
            let _ = write!(frontier, "<td>{}</td>", esc(&c));
        }
        frontier += "</tr>";
    }
    frontier += "</table>";
    let shares: Vec<String> = r
        .overall
        .share_by_model
        .iter()
        .map(|(m, s)| format!("{} {}", esc(m), pct(*s)))
        .collect();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>switchyard routing preview</title><style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}svg{{display:block;margin:1.5em 0}}</style></head><body><h1>Routing preview</h1><p>{n} requests; baseline <b>{base}</b> for every request; objective {obj}. Routed to: {shares}.</p><p>Quality is the catalog's evidence for each request's task and difficulty. A request whose model has no evidence for its task counts as <em>unknown</em>: shown apart, never averaged in as good.</p>{summary}{frontier_svg}{cost}{quality}{unknown}<h2>Frontier</h2>{frontier}{calibration}</body></html>"#,
        n = r.overall.requests,
        base = esc(&r.baseline),
        obj = esc(r.objective.map_or("as each request asks", |o| o.as_str())),
        shares = shares.join(", "),
        frontier_svg = frontier_svg(r),
        calibration = r.calibration.as_ref().map_or(String::new(), |c| format!(
            "<p>{}</p>",
            esc(&calibration_text(c))
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router::decide::pinned;
    use switchyard_router::{AuditLog, RoutingOptions};

    #[test]
    fn a_replayed_record_keeps_what_the_request_needed() {
        let classifier = Classifier::embedded().unwrap();
        let view = RouterView {
            profiles: &[],
            classifier: &classifier,
            default_objective: Objective::Balanced,
            policy: Policy::default(),
        };
        let audit = AuditLog::open(std::path::Path::new(":memory:")).unwrap();
        let turn = |content: &str| switchyard_engine::ChatMessage {
            role: "user".into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        for (id, tools, json) in [("dec-1", true, false), ("dec-2", false, true)] {
            let c = routed::classify(&classifier, &[turn("What is the weather in Paris?")]);
            let mut d = pinned("m", c, RoutingOptions::default(), Objective::Balanced);
            (d.needs_tools, d.needs_json) = (tools, json);
            audit.record(id, &d, "prompt", false).unwrap();
        }
        let (requests, skipped) = view.requests_from_audit(&audit, None, 10).unwrap();
        assert_eq!(skipped, 0);
        let mut needs: Vec<_> = requests
            .iter()
            .map(|r| (r.needs_tools, r.needs_json))
            .collect();
        needs.sort();
        assert_eq!(needs, [(false, true), (true, false)]);
    }
}
