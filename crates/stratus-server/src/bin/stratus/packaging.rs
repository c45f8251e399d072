//! The files a package ships beside the binary, generated from the definitions the command
//! line parses with, so none of them is a hand-kept copy that can drift: the man page and the
//! shell completions from the clap command (`stratus man`, `stratus completions SHELL`, both
//! hidden), and the commented default config file from the settings' clap arguments, their
//! serde keys and `Config::default()` (`stratus config default`).
//!
//! `scripts/package.sh` runs the release binary to write them into the Debian package.

use std::fmt::Write as _;
use std::path::Path;

use clap::Command;
use clap_complete::Shell;
use stratus_server::Config;

use crate::settings::Settings;

/// Options whose default depends on the machine the server runs on (`workers`: one per
/// core): the file leaves them unset instead of writing the build machine's value.
const MACHINE_DEPENDENT: &[&str] = &["workers"];

/// Width the file's comments are wrapped to.
const WIDTH: usize = 90;

/// `stratus completions SHELL`: the completion script for `shell` on stdout.
pub(crate) fn completions(shell: Shell, mut cmd: Command) {
    clap_complete::generate(shell, &mut cmd, "stratus", &mut std::io::stdout());
}

/// `stratus man DIR`: writes the man pages into `dir` (stratus.1, and one per visible
/// subcommand, such as stratus-config-check.1, which stratus.1 refers to) and prints
/// their paths.
pub(crate) fn man(cmd: Command, dir: &Path) -> anyhow::Result<()> {
    fn subcommands(cmd: &Command, dir: &Path) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            subcommands(sub, dir)?;
            let path = clap_mangen::Man::new(sub.clone()).generate_to(dir)?;
            println!("{}", path.display());
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    subcommands(&cmd, dir)?;
    let path = dir.join("stratus.1");
    std::fs::write(&path, main_page(cmd)?)?;
    println!("{}", path.display());
    Ok(())
}

/// stratus(1): clap's sections and the ones it does not know about.
fn main_page(cmd: Command) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let page = clap_mangen::Man::new(cmd);
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    page.render_subcommands_section(&mut out)?;
    out.extend_from_slice(MAN_SECTIONS.as_bytes());
    page.render_version_section(&mut out)?;
    Ok(out)
}

/// The man page's sections that clap does not know: files, environment, signals, exit
/// status, see also.
const MAN_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/stratus/stratus.toml\fR
The configuration file the packaged systemd unit passes with \fB\-\-config\fR: every option
above is a key of the same name without the leading dashes. \fBstratus config default\fR
prints every option commented out and set to its default; \fBstratus config check\fR
\fIFILE\fR validates a file and prints the effective configuration.
.TP
\fI/usr/lib/systemd/system/stratus.service\fR
The systemd unit: \fBsystemctl enable \-\-now stratus\fR.
.SH ENVIRONMENT
Every option is also an environment variable: \fBSTRATUS_\fR and the option's name in
capitals with underscores (\fB\-\-max\-send\-queue\fR is \fBSTRATUS_MAX_SEND_QUEUE\fR).
Flags win over the environment, the environment over the file, the file over the defaults.
\fBRUST_LOG\fR sets the log filter when \fB\-\-log\-level\fR is not given.
.SH SIGNALS
SIGTERM or SIGINT drains: the listeners close, every client gets Close 1001, the server
waits for their replies up to \fB\-\-drain\-timeout\fR, then exits 0.
.SH EXIT STATUS
0 after a drain; 1 when the configuration is invalid or the server cannot start.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBsystemd.exec\fR(5)
"#;

/// `stratus config default`: every option of `stratus serve`, commented out and set to its
/// default, as a config file. The options and their help come from the clap arguments
/// (the parser's own), the values from `Config::default()` through `Settings::effective`
/// (what `stratus config check` prints). Options without a default (secrets, files, the
/// broker) and those whose default depends on the machine are left without a value.
pub(crate) fn default_config() -> anyhow::Result<String> {
    let defaults = Settings::default().effective(&Config::default());
    let values = toml::Table::try_from(&defaults)?;
    let args = <Settings as clap::Args>::augment_args(Command::new("stratus"));
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "Stratus {}: every option of `stratus serve`, commented out and set to its \
             default. Keys are the flag names without the dashes. Flags win over the \
             environment (STRATUS_ and the key in capitals, dashes as underscores), the \
             environment over this file, this file over the defaults. `stratus config check \
             FILE` validates a file and prints the configuration in effect. Generated by \
             `stratus config default`.",
            env!("CARGO_PKG_VERSION")
        ),
    );
    for arg in args.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if key == "config" {
            // The file itself: a file cannot name another.
            continue;
        }
        out.push('\n');
        let help = arg.get_long_help().or(arg.get_help());
        comment(&mut out, &help.map(|h| h.to_string()).unwrap_or_default());
        let value = values
            .get(key)
            .filter(|_| !MACHINE_DEPENDENT.contains(&key));
        match value {
            Some(value) => {
                let _ = writeln!(out, "# {key} = {value}");
            }
            None => {
                let _ = writeln!(out, "# {key} =");
            }
        }
    }
    out.push('\n');
    comment(
        &mut out,
        "Options per topic prefix (config file only), any of: history, history-ttl, \
         recovery, publish, max-subscribers, max-message, slow-consumer. Unset ones follow \
         the server-wide options. [none]",
    );
    out.push_str("# [namespace.\"chat:\"]\n# history = 100\n# slow-consumer = \"drop\"\n");
    Ok(out)
}

/// `text` as `# ` lines of at most `WIDTH` characters.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line.truncate(1);
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{self, Deserialize, Deserializer, Visitor};

    /// A deserializer that only records the field names a struct asks for: serde's own
    /// list of the keys the config file accepts, independent of clap's.
    struct FieldNames(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut FieldNames {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    fn config_keys() -> &'static [&'static str] {
        let mut names = FieldNames(&[]);
        let _ = Settings::deserialize(&mut names);
        names.0
    }

    #[test]
    fn default_config_names_every_key_the_parser_accepts() {
        let text = default_config().unwrap();
        let keys = config_keys();
        assert!(keys.len() > 40, "{keys:?}");
        for key in keys {
            let line = if *key == "namespace" {
                "# [namespace.".to_owned()
            } else {
                format!("\n# {key} =")
            };
            assert!(text.contains(&line), "{key} missing from:\n{text}");
        }
        assert!(
            text.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "every line is a comment"
        );
    }

    #[test]
    fn default_config_passes_config_check_as_it_is_and_uncommented() {
        let text = default_config().unwrap();
        let as_is: Settings = toml::from_str(&text).unwrap();
        as_is.apply(Config::default()).unwrap().validate().unwrap();

        // Every option that has a value, uncommented: the values must be the defaults.
        // (The namespace example at the end is an example, not a default.)
        let (options, _) = text.split_once("# [namespace.").unwrap();
        let uncommented: String = options
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let settings: Settings = toml::from_str(&uncommented).unwrap();
        let config = settings.clone().apply(Config::default()).unwrap();
        config.validate().unwrap();
        let effective = |s: &Settings, c: &Config| toml::to_string(&s.effective(c)).unwrap();
        assert_eq!(
            effective(&settings, &config),
            effective(&Settings::default(), &Config::default()),
            "the file's values are the defaults:\n{uncommented}"
        );
        assert!(uncommented.lines().count() > 35, "{uncommented}");
    }

    #[test]
    fn machine_dependent_defaults_are_left_unset() {
        let text = default_config().unwrap();
        assert!(text.contains("\n# workers =\n"), "{text}");
    }
}
