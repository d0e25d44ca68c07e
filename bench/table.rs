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
    /// The side-by-side table of workloads 1 and 2, printed first.
    pub(crate) side: SideTable,
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
        if !self.side.rows.is_empty() {
            self.side.print();
            println!();
        }
        let cells = |r: &Row| {
            [&r.workload, &r.n, &r.ours, &r.target, &r.ratio, &r.met].map(|c| c.to_string())
        };
        let header = ["workload", "N", "ours", "floor/target", "ratio", "met?"].map(String::from);
        let mut grid = vec![header.to_vec()];
        grid.extend(self.rows.iter().map(|r| cells(r).to_vec()));
        print_grid(&grid, &[false, true, true, false, true, false]);
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}

/// The side-by-side table: a column per tool (the floor, ours, each peer, measured or not) and
/// a verdict per row.
#[derive(Default)]
pub(crate) struct SideTable {
    pub(crate) tools: Vec<String>,
    /// Peers not measured: their column name and why.
    pub(crate) skipped: Vec<(String, String)>,
    rows: Vec<Vec<String>>,
}

impl SideTable {
    /// A row: `cells` in the order of `tools`, then `verdict`.
    pub(crate) fn row(&mut self, workload: &str, n: &str, cells: Vec<String>, verdict: &str) {
        let mut row = vec![workload.to_string(), n.to_string()];
        row.extend(cells);
        row.extend(self.skipped.iter().map(|_| "not measured".to_string()));
        row.push(verdict.to_string());
        self.rows.push(row);
    }

    fn print(&self) {
        let mut header = vec!["workload".to_string(), "N".to_string()];
        header.extend(self.tools.iter().cloned());
        header.extend(self.skipped.iter().map(|(name, _)| name.clone()));
        header.push("faster than every peer?".into());
        let mut align = vec![true; header.len()];
        align[0] = false;
        align[header.len() - 1] = false;
        let mut grid = vec![header];
        grid.extend(self.rows.iter().cloned());
        print_grid(&grid, &align);
        for (name, why) in &self.skipped {
            println!("- {name}: {why}");
        }
    }
}

/// Prints `grid` (its first row the header) as a Markdown table; `right[i]`: column i is
/// right-aligned.
fn print_grid(grid: &[Vec<String>], right: &[bool]) {
    let columns = grid.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            grid.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: &Vec<String>| {
        let cells: Vec<String> = (0..columns)
            .map(|i| {
                let c = r.get(i).map_or("", String::as_str);
                match right.get(i) {
                    Some(true) => format!(" {c:>w$} ", w = widths[i]),
                    _ => format!(" {c:<w$} ", w = widths[i]),
                }
            })
            .collect();
        format!("|{}|", cells.join("|"))
    };
    for (i, r) in grid.iter().enumerate() {
        println!("{}", line(r));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            println!("|{}|", rule.join("|"));
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
