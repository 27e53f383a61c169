//! The `options` startup parameter, split and read the way Postgres does.
//!
//! libpq sends `options` as one string of command-line switches. Postgres
//! splits it on whitespace, a backslash escaping the next character
//! (`pg_split_opts`), then reads `-c name=value`, `-cname=value` and
//! `--name=value` as settings. pgsteer reads its own `pgsteer.*` settings
//! from it and forwards the rest, re-escaped, unchanged.

/// Splits an `options` value into arguments (`pg_split_opts`).
pub fn split(options: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|&c| is_space(c)).is_some() {}
        if chars.peek().is_none() {
            return args;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next_if(|&c| !is_space(c)) {
            if c == '\\' {
                // A backslash takes the next character literally, space included.
                match chars.next() {
                    Some(n) => arg.push(n),
                    None => break,
                }
            } else {
                arg.push(c);
            }
        }
        args.push(arg);
    }
}

/// Whitespace as Postgres' `isspace` sees it: `char::is_ascii_whitespace` plus the
/// vertical tab, which Postgres also splits on.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// Joins arguments back into an `options` value that [`split`] reads identically.
pub fn join<S: AsRef<str>>(args: &[S]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for c in arg.as_ref().chars() {
            if c == '\\' || is_space(c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// One switch of an `options` value, with the argument strings it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The arguments as split (one, or two for `-c name=value`).
    pub args: Vec<String>,
    /// The setting, if this switch sets one: `(name, value)` with `-` in the
    /// name read as `_`, as Postgres does.
    pub setting: Option<(String, String)>,
}

/// Groups split arguments into switches and reads the settings among them.
///
/// Switches that are not settings (`-e`, `-B 10`, …) are kept as they are,
/// so they can be forwarded untouched. Returns `Err(arg)` for a setting
/// without `=value`, which Postgres also rejects.
pub fn parse(args: Vec<String>) -> Result<Vec<Switch>, String> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-c" {
            let Some(val) = it.next() else {
                return Err(arg);
            };
            let setting = Some(setting(&val).ok_or_else(|| val.clone())?);
            out.push(Switch {
                args: vec![arg, val],
                setting,
            });
        } else if let Some(rest) = arg.strip_prefix("-c").or_else(|| arg.strip_prefix("--")) {
            let setting = Some(setting(rest).ok_or_else(|| arg.clone())?);
            out.push(Switch {
                args: vec![arg],
                setting,
            });
        } else {
            out.push(Switch {
                args: vec![arg],
                setting: None,
            });
        }
    }
    Ok(out)
}

fn setting(s: &str) -> Option<(String, String)> {
    let (name, value) = s.split_once('=')?;
    Some((name.replace('-', "_"), value.to_owned()))
}

/// Settings taken out of an `options` value, and what is left of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Taken {
    /// `(name, value)` of each setting taken, in order.
    pub settings: Vec<(String, String)>,
    /// The remaining arguments re-joined; `None` if nothing is left.
    pub rest: Option<String>,
}

/// Removes the settings whose name starts with `prefix` from an `options`
/// value. `Err(arg)` names a malformed setting.
pub fn take_prefixed(options: &str, prefix: &str) -> Result<Taken, String> {
    let mut taken = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    for sw in parse(split(options))? {
        match sw.setting {
            Some((name, value)) if name.starts_with(prefix) => taken.push((name, value)),
            _ => kept.extend(sw.args),
        }
    }
    let rest = (!kept.is_empty()).then(|| join(&kept));
    Ok(Taken {
        settings: taken,
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_honours_backslash_escapes() {
        assert_eq!(
            split(r"  -c search_path=a\ b  --x=\\y "),
            vec!["-c", "search_path=a b", r"--x=\y"]
        );
    }

    #[test]
    fn join_then_split_is_identity() {
        let args = vec!["-c".to_string(), r"a=b c\d".to_string()];
        assert_eq!(split(&join(&args)), args);
    }

    #[test]
    fn settings_come_in_three_spellings() {
        let sw = parse(split("-c a=1 -cb=2 --c-d=3 -e")).unwrap();
        let settings: Vec<_> = sw.iter().filter_map(|s| s.setting.clone()).collect();
        assert_eq!(
            settings,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c_d".into(), "3".into())
            ]
        );
        assert_eq!(sw[3].args, vec!["-e"]);
    }

    #[test]
    fn own_settings_are_taken_and_the_rest_kept_verbatim() {
        let Taken {
            settings: taken,
            rest,
        } = take_prefixed(
            r"-c pgsteer.route=replica -c search_path=a\ b --pgsteer.pod=pg-1",
            "pgsteer.",
        )
        .unwrap();
        assert_eq!(
            taken,
            vec![
                ("pgsteer.route".into(), "replica".into()),
                ("pgsteer.pod".into(), "pg-1".into())
            ]
        );
        assert_eq!(rest.as_deref(), Some(r"-c search_path=a\ b"));
    }

    #[test]
    fn a_setting_without_value_is_an_error() {
        assert!(parse(split("-c novalue")).is_err());
        assert!(parse(split("-c")).is_err());
    }
}
