//! `ondisk ctl auth|user|role`: etcdctl's commands for the switch, users and roles, over the HTTP
//! API (`POST /v1/auth` with an [`AuthRequest`], `GET /v1/auth/users|roles[/NAME]`). Only root
//! may run them once authentication is on, so they usually go with `--user root`.

use std::io;
use std::io::BufRead;
use std::io::IsTerminal;

use clap::Subcommand;

use crate::api;
use crate::api::AuthRequest;
use crate::api::Permission;
use crate::api::PermissionKind;
use crate::api::RoleInfo;
use crate::api::UserInfo;

use super::done;
use super::print_json;
use super::Client;
use super::CtlError;
use super::Result;

/// What `ondisk ctl auth` can do.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Turn authentication on: from then on every request needs a user (needs a `root` user
    /// with the `root` role).
    Enable,
    /// Turn authentication off (as root).
    Disable,
}

/// What `ondisk ctl user` can do.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is asked for (twice) when it is not given as NAME:PASSWORD, or
    /// read from stdin's first line when stdin is not a terminal.
    Add {
        // Not called `user`: that is the global `--user` flag's id, and clap would take this
        // value for it.
        /// NAME or NAME:PASSWORD.
        #[arg(value_name = "NAME[:PASSWORD]")]
        account: String,
        /// A user that cannot log in with a password.
        #[arg(long = "no-password")]
        no_password: bool,
    },
    /// Delete a user.
    Delete { name: String },
    /// Show a user's roles.
    Get { name: String },
    /// List every user.
    List,
    /// Change a user's password: asked for twice, or read from stdin's first line when stdin
    /// is not a terminal. The user's tokens stop working.
    Passwd { name: String },
    /// Give a user a role.
    GrantRole {
        #[arg(value_name = "USER")]
        name: String,
        role: String,
    },
    /// Take a role from a user.
    RevokeRole {
        #[arg(value_name = "USER")]
        name: String,
        role: String,
    },
}

/// What `ondisk ctl role` can do.
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role (with no permissions).
    Add { name: String },
    /// Delete a role; its users lose it.
    Delete { name: String },
    /// Show a role's permissions.
    Get { name: String },
    /// List every role.
    List,
    /// Let ROLE read, write or both (`read`, `write`, `readwrite`) KEY, the range [KEY, END),
    /// every key under the prefix KEY (`--prefix`), or every key from KEY on (`--from-key`).
    GrantPermission {
        role: String,
        #[arg(value_parser = parse_kind)]
        kind: PermissionKind,
        #[command(flatten)]
        keys: PermissionKeys,
    },
    /// Take back ROLE's permission on exactly those keys, whatever its kind.
    RevokePermission {
        role: String,
        #[command(flatten)]
        keys: PermissionKeys,
    },
}

/// The keys a permission covers, as etcdctl names them.
#[derive(Debug, clap::Args)]
pub struct PermissionKeys {
    /// The key, or the first key of the range.
    key: String,
    /// The end of the range, not included.
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    end: Option<String>,
    /// Every key that starts with KEY.
    #[arg(long, conflicts_with = "from_key")]
    prefix: bool,
    /// Every key from KEY on.
    #[arg(long = "from-key")]
    from_key: bool,
}

impl PermissionKeys {
    /// The key and `range_end` as a [`Permission`] holds them.
    fn span(self) -> (Vec<u8>, Vec<u8>) {
        let key = self.key.into_bytes();
        let range_end = if self.prefix {
            api::prefix_end(&key)
        } else if self.from_key {
            vec![0]
        } else {
            self.end.map(String::into_bytes).unwrap_or_default()
        };
        (key, range_end)
    }
}

fn parse_kind(text: &str) -> std::result::Result<PermissionKind, String> {
    match text.to_ascii_lowercase().as_str() {
        "read" => Ok(PermissionKind::Read),
        "write" => Ok(PermissionKind::Write),
        "readwrite" => Ok(PermissionKind::ReadWrite),
        _ => Err(format!("'{text}': the kind is read, write or readwrite")),
    }
}

/// Sends one change; the answer is a response header, which only `--json` shows.
fn change(client: &Client, request: &AuthRequest) -> Result<()> {
    client.send_json::<api::ResponseHeader>("POST", api::http::AUTH, request)?;
    Ok(())
}

/// Runs one `auth` command.
pub(super) fn run_auth(client: &Client, command: AuthCommand, json: bool) -> Result<()> {
    match command {
        AuthCommand::Enable => {
            change(client, &AuthRequest::Enable)?;
            done(json, "Authentication Enabled")
        }
        AuthCommand::Disable => {
            change(client, &AuthRequest::Disable)?;
            done(json, "Authentication Disabled")
        }
    }
}

/// Runs one `user` command.
pub(super) fn run_user(client: &Client, command: UserCommand, json: bool) -> Result<()> {
    match command {
        UserCommand::Add {
            account,
            no_password,
        } => {
            let (name, password) = match account.split_once(':') {
                Some(_) if no_password => {
                    return Err(CtlError::Input(
                        "a password is given with --no-password".into(),
                    ))
                }
                Some((name, password)) => (name.to_string(), Some(password.to_string())),
                None if no_password => (account, None),
                None => {
                    let password = new_password(&account)?;
                    (account, Some(password))
                }
            };
            change(
                client,
                &AuthRequest::UserAdd {
                    name: name.clone(),
                    password,
                },
            )?;
            done(json, &format!("User {name} created"))
        }
        UserCommand::Delete { name } => {
            change(client, &AuthRequest::UserDelete { name: name.clone() })?;
            done(json, &format!("User {name} deleted"))
        }
        UserCommand::Get { name } => {
            let user: UserInfo = client.get(&named(api::http::AUTH_USERS, &name))?;
            if json {
                return print_json(&user);
            }
            println!("User: {}", user.name);
            println!("Roles: {}", user.roles.join(" "));
            Ok(())
        }
        UserCommand::List => list(client, api::http::AUTH_USERS, json),
        UserCommand::Passwd { name } => {
            let password = new_password(&name)?;
            change(client, &AuthRequest::UserChangePassword { name, password })?;
            done(json, "Password updated")
        }
        UserCommand::GrantRole { name, role } => {
            let message = format!("Role {role} is granted to user {name}");
            change(client, &AuthRequest::UserGrantRole { user: name, role })?;
            done(json, &message)
        }
        UserCommand::RevokeRole { name, role } => {
            let message = format!("Role {role} is revoked from user {name}");
            change(client, &AuthRequest::UserRevokeRole { user: name, role })?;
            done(json, &message)
        }
    }
}

/// Runs one `role` command.
pub(super) fn run_role(client: &Client, command: RoleCommand, json: bool) -> Result<()> {
    match command {
        RoleCommand::Add { name } => {
            change(client, &AuthRequest::RoleAdd { name: name.clone() })?;
            done(json, &format!("Role {name} created"))
        }
        RoleCommand::Delete { name } => {
            change(client, &AuthRequest::RoleDelete { name: name.clone() })?;
            done(json, &format!("Role {name} deleted"))
        }
        RoleCommand::Get { name } => {
            let role: RoleInfo = client.get(&named(api::http::AUTH_ROLES, &name))?;
            if json {
                return print_json(&role);
            }
            print_role(&role);
            Ok(())
        }
        RoleCommand::List => list(client, api::http::AUTH_ROLES, json),
        RoleCommand::GrantPermission { role, kind, keys } => {
            let (key, range_end) = keys.span();
            let permission = Permission {
                kind,
                key,
                range_end,
            };
            let message = format!("Role {role} updated");
            change(
                client,
                &AuthRequest::RoleGrantPermission { role, permission },
            )?;
            done(json, &message)
        }
        RoleCommand::RevokePermission { role, keys } => {
            let (key, range_end) = keys.span();
            let message = format!(
                "Permission of {} is revoked from role {role}",
                describe_keys(&key, &range_end)
            );
            change(
                client,
                &AuthRequest::RoleRevokePermission {
                    role,
                    key,
                    range_end,
                },
            )?;
            done(json, &message)
        }
    }
}

/// `collection/NAME`, the name percent-encoded.
fn named(collection: &str, name: &str) -> String {
    format!(
        "{collection}/{}",
        api::http::percent_encode(name.as_bytes())
    )
}

/// Prints every user's or role's name, one a line.
fn list(client: &Client, collection: &str, json: bool) -> Result<()> {
    let names: Vec<String> = client.get(collection)?;
    if json {
        return print_json(&names);
    }
    for name in names {
        println!("{name}");
    }
    Ok(())
}

/// A role's permissions grouped by what they allow, as etcdctl prints them.
fn print_role(role: &RoleInfo) {
    println!("Role {}", role.name);
    for (heading, access) in [
        ("KV Read:", api::KeyAccess::Read),
        ("KV Write:", api::KeyAccess::Write),
    ] {
        println!("{heading}");
        for permission in role.permissions.iter().filter(|p| p.kind.allows(access)) {
            println!(
                "\t{}",
                describe_keys(&permission.key, &permission.range_end)
            );
        }
    }
}

/// The keys of a permission in words: a key, a range, a prefix or everything from a key on.
fn describe_keys(key: &[u8], range_end: &[u8]) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if range_end.is_empty() {
        format!("key {}", text(key))
    } else if range_end == [0] {
        format!("range [{}, <open ended>)", text(key))
    } else if range_end == api::prefix_end(key) {
        format!(
            "range [{}, {}) (prefix {})",
            text(key),
            text(range_end),
            text(key)
        )
    } else {
        format!("range [{}, {})", text(key), text(range_end))
    }
}

/// A new password for `name`: typed twice without echo on a terminal, or stdin's first line.
fn new_password(name: &str) -> Result<String> {
    let unreadable = |e: io::Error| CtlError::Input(format!("cannot read the password: {e}"));
    if !io::stdin().is_terminal() {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(unreadable)?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(CtlError::Input(format!(
                "no password for {name} on stdin (or use NAME:PASSWORD, or --no-password)"
            )));
        }
        return Ok(password);
    }
    let password =
        rpassword::prompt_password(format!("Password of {name}: ")).map_err(unreadable)?;
    let again =
        rpassword::prompt_password(format!("Type password of {name} again for confirmation: "))
            .map_err(unreadable)?;
    if password != again {
        return Err(CtlError::Input("the two passwords differ".into()));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::describe_keys;
    use super::PermissionKeys;

    fn keys(key: &str, end: Option<&str>, prefix: bool, from_key: bool) -> (Vec<u8>, Vec<u8>) {
        PermissionKeys {
            key: key.into(),
            end: end.map(Into::into),
            prefix,
            from_key,
        }
        .span()
    }

    #[test]
    fn permission_keys_are_etcdctls() {
        assert_eq!(keys("k", None, false, false), (b"k".to_vec(), vec![]));
        assert_eq!(
            keys("a", Some("c"), false, false),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(
            keys("app/", None, true, false),
            (b"app/".to_vec(), b"app0".to_vec())
        );
        assert_eq!(keys("m", None, false, true), (b"m".to_vec(), vec![0]));
    }

    #[test]
    fn keys_are_described_by_their_shape() {
        assert_eq!(describe_keys(b"k", b""), "key k");
        assert_eq!(describe_keys(b"a", b"c"), "range [a, c)");
        assert_eq!(
            describe_keys(b"app/", b"app0"),
            "range [app/, app0) (prefix app/)"
        );
        assert_eq!(describe_keys(b"m", &[0]), "range [m, <open ended>)");
    }
}
