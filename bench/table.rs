//! The result table: one row per figure, its target or floor and whether it was met; notes.

struct Row {
    workload: String,
    n: String,
    ours: String,
    target: String,
    ratio: String,
    met: String,
}

#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Table {
    pub(crate) fn row(
        &mut self,
        workload: &str,
        n: &str,
        ours: String,
        target: &str,
        ratio: String,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            workload: workload.into(),
            n: n.into(),
            ours,
            target: target.into(),
            ratio,
            met: match met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
        });
    }

    pub(crate) fn print(&self) {
        let header = Row {
            workload: "workload".into(),
            n: "N".into(),
            ours: "ours".into(),
            target: "floor/target".into(),
            ratio: "ratio".into(),
            met: "met?".into(),
        };
        let all: Vec<&Row> = std::iter::once(&header).chain(&self.rows).collect();
        let w = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
        let widths = [
            w(|r| &r.workload),
            w(|r| &r.n),
            w(|r| &r.ours),
            w(|r| &r.target),
            w(|r| &r.ratio),
            w(|r| &r.met),
        ];
        let line = |r: &Row| {
            format!(
                "| {:<a$} | {:>b$} | {:>c$} | {:<d$} | {:>e$} | {:<f$} |",
                r.workload,
                r.n,
                r.ours,
                r.target,
                r.ratio,
                r.met,
                a = widths[0],
                b = widths[1],
                c = widths[2],
                d = widths[3],
                e = widths[4],
                f = widths[5]
            )
        };
        println!("{}", line(&header));
        println!(
            "|{}|",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            println!("{}", line(r));
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

pub(crate) fn fmt_n(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

pub(crate) fn mib(v: f64) -> String {
    format!("{v:.1} MiB")
}
