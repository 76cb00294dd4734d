//! The login's prompts after the password: token codes, password changes, sign-in notices and
//! the session limit (docs/login.md). This module owns what is asked ([`Prompt`]), what can
//! answer it ([`Answer`], the up-front [`Answers`] of a request), and the decision between
//! answering from those, asking the caller over the control socket, and failing; the
//! connection task only hands it the client's events and sends what it returns.
//!
//! ```text
//!  ClientEvent ──Prompt::of──▶ Prompter::decide ──▶ up-front answer ─┐
//!                                   │                                ├─▶ apply(Client)
//!                                   ├─▶ ask the caller (control) ────┘
//!                                   └─▶ PromptError (no one can answer, cancelled, ...)
//! ```
//!
//! It does no I/O of its own except the channel to the request handler that talks to the
//! caller ([`Asker`]) and the reports it makes through [`Emit`]; it never touches the TLS
//! session.

use std::{net::SocketAddr, sync::Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use tunnel_config::{EventKind, Level};
use tunnel_proto::{Client, ClientEvent, SessionError};

use super::{Emit, status::Failure};

// The password field of the gateways' current password request (Ivanti Connect Secure
// 22.x): a longer password is cut to this many bytes.
use tunnel_proto::CURRENT_PASSWORD_FIELD as CURRENT_FORM_PASSWORD_BYTES;

/// One session the gateway lists at the session limit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListedSession {
    /// The id that ends it.
    pub id: String,
    /// Where it comes from (the client's address, as the gateway shows it).
    pub from: String,
    /// When it started, Unix seconds.
    pub started: u64,
}

/// What the gateway asks of the user during a login.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prompt {
    /// A token code (second factor); `next`: the previous request was a token code too.
    Token { prompt: String, next: bool },
    /// The password has expired: a new one.
    NewPassword,
    /// A sign-in notice the login waits for the user to accept.
    Notice { text: String },
    /// The user is at the session limit: which session to end.
    SessionLimit { sessions: Vec<ListedSession> },
}

impl Prompt {
    /// The prompt a client event asks, if it asks one (a notice that needs no acceptance
    /// asks nothing: it is only shown).
    pub(crate) fn of(event: &ClientEvent) -> Option<Prompt> {
        match event {
            ClientEvent::TokenRequired { prompt, next } => Some(Prompt::Token {
                prompt: prompt.clone(),
                next: *next,
            }),
            ClientEvent::PasswordChangeRequired => Some(Prompt::NewPassword),
            ClientEvent::Notice {
                text,
                needs_acceptance: true,
            } => Some(Prompt::Notice { text: text.clone() }),
            ClientEvent::SessionLimit { sessions } => Some(Prompt::SessionLimit {
                sessions: sessions
                    .iter()
                    .map(|s| ListedSession {
                        id: s.id.clone(),
                        from: s.from.clone(),
                        started: s.started,
                    })
                    .collect(),
            }),
            _ => None,
        }
    }

    /// What is asked, for messages.
    pub fn what(&self) -> &'static str {
        match self {
            Prompt::Token { next: false, .. } => "a token code",
            Prompt::Token { next: true, .. } => "the next token code",
            Prompt::NewPassword => "a new password (the password has expired)",
            Prompt::Notice { .. } => "the acceptance of a sign-in notice",
            Prompt::SessionLimit { .. } => {
                "which session to end (the user is at the session limit)"
            }
        }
    }

    /// How a script gives the answer up front.
    fn options(&self) -> &'static str {
        match self {
            Prompt::Token { next: false, .. } => "tunnel connect --token or --token-stdin",
            Prompt::Token { next: true, .. } => "only a terminal can answer it",
            Prompt::NewPassword => "tunnel connect --new-password-stdin",
            Prompt::Notice { .. } => "tunnel connect --accept-notice",
            Prompt::SessionLimit { .. } => {
                "tunnel connect --end-session ID|oldest or --cancel-at-session-limit; launcher -sessionselection connect|cancel"
            }
        }
    }
}

/// An answer to a [`Prompt`].
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Token {
        code: String,
    },
    NewPassword {
        password: String,
    },
    AcceptNotice,
    EndSession {
        id: String,
    },
    /// The user gives up (declines the notice, ends no session, enters nothing).
    Cancel,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Token { .. } => f.write_str("Token(..)"),
            Answer::NewPassword { .. } => f.write_str("NewPassword(..)"),
            Answer::AcceptNotice => f.write_str("AcceptNotice"),
            Answer::EndSession { id } => write!(f, "EndSession({id})"),
            Answer::Cancel => f.write_str("Cancel"),
        }
    }
}

/// What to do at the session limit, given up front.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionChoice {
    /// End the oldest session: the earliest start, the first listed among equals (the
    /// launcher's "terminate the first session").
    Oldest,
    /// End the session with this id.
    Id(String),
    /// Give up (exit code 5, user cancelled).
    Cancel,
}

impl SessionChoice {
    /// `oldest` or a session id (the value of `--end-session`).
    pub fn parse(text: &str) -> SessionChoice {
        if text == "oldest" {
            SessionChoice::Oldest
        } else {
            SessionChoice::Id(text.to_string())
        }
    }
}

/// How a connect request answers the prompts: up front, and whether its caller answers the
/// rest on the control socket.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answers {
    /// The first token code.
    pub token: Option<String>,
    /// The new password, when the password has expired.
    pub new_password: Option<String>,
    /// Accept sign-in notices.
    #[serde(default)]
    pub accept_notice: bool,
    /// What to do at the session limit.
    pub at_session_limit: Option<SessionChoice>,
    /// The caller answers prompt lines on the control socket (someone is at a terminal).
    #[serde(default)]
    pub interactive: bool,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("new_password", &self.new_password.as_ref().map(|_| ".."))
            .field("accept_notice", &self.accept_notice)
            .field("at_session_limit", &self.at_session_limit)
            .field("interactive", &self.interactive)
            .finish()
    }
}

/// Why a prompt ended the login.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// Nothing answers it: no up-front answer and no one to ask.
    #[error("the gateway asks for {what}, and no one can answer here (give it with {options})")]
    CannotAsk {
        what: &'static str,
        options: &'static str,
    },
    /// The user declined the sign-in notice.
    #[error("the sign-in notice was declined")]
    NoticeDeclined,
    /// The user gave up at a prompt.
    #[error("cancelled at the gateway's request for {what}")]
    Cancelled { what: &'static str },
    /// The session to end is not one the gateway listed.
    #[error("session '{id}' is not one the gateway listed (it lists {listed})")]
    UnknownSession { id: String, listed: String },
    /// The gateway listed no session to end.
    #[error("the gateway reports the session limit but lists no session to end")]
    NoSessions,
    /// A password change without a current password (the login did not use one).
    #[error("the gateway asks for a new password, but this login gave no current password")]
    NoCurrentPassword,
    /// The answer does not fit the prompt (a confused caller).
    #[error("the answer {answer:?} does not answer {what}")]
    WrongAnswer { what: &'static str, answer: Answer },
    /// The client refused to send the answer.
    #[error("answering {what}: {source}")]
    Session {
        what: &'static str,
        source: SessionError,
    },
}

impl PromptError {
    /// The user chose to stop (the launcher's exit code 5), rather than the login failing.
    pub fn is_cancel(&self) -> bool {
        matches!(
            self,
            PromptError::NoticeDeclined | PromptError::Cancelled { .. }
        )
    }
}

/// What to do about a prompt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Answer(Answer),
    /// Ask the caller.
    Ask,
    Fail(PromptError),
}

/// A prompt on its way to the caller, with where its answer goes.
pub(crate) struct Asked {
    pub(crate) prompt: Prompt,
    reply: oneshot::Sender<Answer>,
}

impl Asked {
    /// Sends the caller's answer back to the connection.
    pub(crate) fn reply(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// The connection's way to the request handler that talks to the caller.
#[derive(Clone)]
pub(crate) struct Asker(mpsc::Sender<Asked>);

/// A channel from a connection to the request handler of an interactive connect.
pub(crate) fn channel() -> (Asker, mpsc::Receiver<Asked>) {
    let (tx, rx) = mpsc::channel(1);
    (Asker(tx), rx)
}

impl Asker {
    /// The caller's answer; None when the request has ended (no one is there any more).
    async fn ask(&self, prompt: Prompt) -> Option<Answer> {
        let (reply, answer) = oneshot::channel();
        self.0.send(Asked { prompt, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// A connection's answers to the prompts of its logins: the request's up-front answers (each
/// used once) and, while the request is open, its caller.
#[derive(Clone, Default)]
pub(crate) struct Prompter {
    answers: Answers,
    asker: Option<Asker>,
    /// The password set by a change, for the logins that follow.
    changed_password: Option<String>,
}

impl Prompter {
    pub(crate) fn new(answers: Answers, asker: Option<Asker>) -> Prompter {
        let asker = asker.filter(|_| answers.interactive);
        Prompter {
            answers,
            asker,
            changed_password: None,
        }
    }

    /// The password to log in with: a changed one, else the request's.
    pub(crate) fn password<'a>(&'a self, given: Option<&'a str>) -> Option<&'a str> {
        self.changed_password.as_deref().or(given)
    }

    /// Answers from what was given up front, or asks, or fails.
    pub(crate) fn decide(&mut self, prompt: &Prompt) -> Decision {
        let upfront = match prompt {
            // A code is good once: the next one cannot come from the same option.
            Prompt::Token { next: false, .. } => {
                self.answers.token.take().map(|code| Answer::Token { code })
            }
            Prompt::Token { next: true, .. } => None,
            Prompt::NewPassword => self
                .answers
                .new_password
                .take()
                .map(|password| Answer::NewPassword { password }),
            Prompt::Notice { .. } => self.answers.accept_notice.then_some(Answer::AcceptNotice),
            Prompt::SessionLimit { sessions } => match &self.answers.at_session_limit {
                None => None,
                Some(SessionChoice::Cancel) => Some(Answer::Cancel),
                Some(SessionChoice::Id(id)) => Some(Answer::EndSession { id: id.clone() }),
                Some(SessionChoice::Oldest) => match oldest(sessions) {
                    Some(s) => Some(Answer::EndSession { id: s.id.clone() }),
                    None => return Decision::Fail(PromptError::NoSessions),
                },
            },
        };
        match upfront {
            Some(answer) => Decision::Answer(answer),
            None if self.asker.is_some() => Decision::Ask,
            None => Decision::Fail(PromptError::CannotAsk {
                what: prompt.what(),
                options: prompt.options(),
            }),
        }
    }

    /// The answer to `prompt`, from the up-front answers or the caller.
    pub(crate) async fn answer(&mut self, prompt: &Prompt) -> Result<Answer, PromptError> {
        match self.decide(prompt) {
            Decision::Answer(a) => Ok(a),
            Decision::Fail(e) => Err(e),
            Decision::Ask => {
                let asker = self.asker.clone();
                match asker {
                    Some(asker) => match asker.ask(prompt.clone()).await {
                        Some(answer) => Ok(answer),
                        None => {
                            // The request is over: later prompts cannot be asked either.
                            self.asker = None;
                            Err(PromptError::CannotAsk {
                                what: prompt.what(),
                                options: prompt.options(),
                            })
                        }
                    },
                    None => Err(PromptError::CannotAsk {
                        what: prompt.what(),
                        options: prompt.options(),
                    }),
                }
            }
        }
    }

    /// Acts on a client event that asks something (other events are left alone): answers
    /// it through `client`, from the up-front answers or the caller. `given`: the request's
    /// password. Err: the login ends.
    pub(crate) async fn on_event(
        &mut self,
        event: &ClientEvent,
        client: &Mutex<Client>,
        given: Option<&str>,
    ) -> Result<(), PromptError> {
        let Some(prompt) = Prompt::of(event) else {
            return Ok(());
        };
        let answer = self.answer(&prompt).await?;
        let password = self.password(given).map(str::to_owned);
        let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
        self.apply(&mut client, &prompt, answer, password.as_deref())
    }

    /// Sends `answer` to `prompt` through the client; `password` is the current one (for a
    /// change).
    pub(crate) fn apply(
        &mut self,
        client: &mut Client,
        prompt: &Prompt,
        answer: Answer,
        password: Option<&str>,
    ) -> Result<(), PromptError> {
        let what = prompt.what();
        let session = |source| PromptError::Session { what, source };
        match (prompt, answer) {
            (Prompt::Notice { .. }, Answer::Cancel) => Err(PromptError::NoticeDeclined),
            (_, Answer::Cancel) => Err(PromptError::Cancelled { what }),
            (Prompt::Token { .. }, Answer::Token { code }) => {
                client.provide_token(&code).map_err(session)
            }
            (Prompt::NewPassword, Answer::NewPassword { password: new }) => {
                let old = password.ok_or(PromptError::NoCurrentPassword)?;
                client.change_password(old, &new).map_err(session)?;
                self.changed_password = Some(new);
                Ok(())
            }
            (Prompt::Notice { .. }, Answer::AcceptNotice) => {
                client.accept_notice().map_err(session)
            }
            (Prompt::SessionLimit { sessions }, Answer::EndSession { id }) => {
                if !sessions.iter().any(|s| s.id == id) {
                    return Err(PromptError::UnknownSession {
                        id,
                        listed: listed(sessions),
                    });
                }
                client.end_session(&id).map_err(session)
            }
            (_, answer) => Err(PromptError::WrongAnswer { what, answer }),
        }
    }
}

/// The oldest of the listed sessions: the earliest start, the first listed among equals.
pub fn oldest(sessions: &[ListedSession]) -> Option<&ListedSession> {
    sessions
        .iter()
        .enumerate()
        .min_by_key(|(i, s)| (s.started, *i))
        .map(|(_, s)| s)
}

fn listed(sessions: &[ListedSession]) -> String {
    if sessions.is_empty() {
        return "none".into();
    }
    sessions
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes a sign-in notice into the event log.
pub(crate) fn log_notice(emit: &Emit, connection: &str, text: &str) {
    emit.message(
        Level::Info,
        &format!("Connection {connection}: sign-in notice from the gateway: {text}"),
    );
}

/// Warns, in the log and the event log, when the gateway's password form cuts the password.
pub(crate) fn warn_if_cut(emit: &Emit, connection: &str, max_password_len: usize, password: &str) {
    if let Some(warning) = password_cut(max_password_len, password) {
        warn!(%connection, "{warning}");
        emit.message(
            Level::Warning,
            &format!("Connection {connection}: {warning}"),
        );
    }
}

/// Reports a prompt that ended the login (event 303) and makes the connection's failure.
pub(crate) fn failed(emit: &Emit, connection: &str, peer: SocketAddr, e: PromptError) -> Failure {
    let message = format!("login ended: {e}");
    emit.event(EventKind::ConnectionError {
        connection: connection.to_string(),
        error: message.clone(),
        peer: peer.ip().to_string(),
    });
    if e.is_cancel() {
        Failure::Cancelled(message)
    } else {
        Failure::Prompt(message)
    }
}

/// Reports a request the client does not understand (event 303) and makes the failure.
pub(crate) fn unsupported(
    emit: &Emit,
    connection: &str,
    peer: SocketAddr,
    what: String,
) -> Failure {
    let message = SessionError::UnsupportedRequest { what }.to_string();
    emit.event(EventKind::ConnectionError {
        connection: connection.to_string(),
        error: message.clone(),
        peer: peer.ip().to_string(),
    });
    Failure::Unsupported(format!("login ended: {message}"))
}

/// The warning for a password the gateway's request form cuts, if it does.
pub(crate) fn password_cut(max_password_len: usize, password: &str) -> Option<String> {
    (max_password_len == CURRENT_FORM_PASSWORD_BYTES && password.len() > max_password_len).then(
        || {
            format!(
                "the password is {} bytes long and was cut to {CURRENT_FORM_PASSWORD_BYTES} bytes, as current Ivanti gateways require",
                password.len()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, started: u64) -> ListedSession {
        ListedSession {
            id: id.into(),
            from: "192.0.2.7".into(),
            started,
        }
    }

    fn token(next: bool) -> Prompt {
        Prompt::Token {
            prompt: "Token code".into(),
            next,
        }
    }

    fn cannot(p: &Prompt) -> Decision {
        Decision::Fail(PromptError::CannotAsk {
            what: p.what(),
            options: p.options(),
        })
    }

    #[test]
    fn up_front_answers_are_used_once_and_never_for_the_next_code() {
        let mut p = Prompter::new(
            Answers {
                token: Some("123456".into()),
                new_password: Some("n3w".into()),
                ..Answers::default()
            },
            None,
        );
        assert_eq!(
            p.decide(&token(false)),
            Decision::Answer(Answer::Token {
                code: "123456".into()
            })
        );
        // A second login (or the gateway asking again) does not reuse the code.
        assert_eq!(p.decide(&token(false)), cannot(&token(false)));
        assert_eq!(p.decide(&token(true)), cannot(&token(true)));
        assert_eq!(
            p.decide(&Prompt::NewPassword),
            Decision::Answer(Answer::NewPassword {
                password: "n3w".into()
            })
        );
        assert_eq!(p.decide(&Prompt::NewPassword), cannot(&Prompt::NewPassword));
    }

    #[test]
    fn without_answers_or_a_caller_every_prompt_fails_naming_it() {
        let mut p = Prompter::new(Answers::default(), None);
        let notice = Prompt::Notice {
            text: "Authorised use only".into(),
        };
        let limit = Prompt::SessionLimit {
            sessions: vec![session("s1", 5)],
        };
        for prompt in [token(false), Prompt::NewPassword, notice, limit] {
            let Decision::Fail(e) = p.decide(&prompt) else {
                panic!("{prompt:?} was not refused")
            };
            let text = e.to_string();
            assert!(
                text.contains(prompt.what()) && text.contains("no one can answer"),
                "{text}"
            );
            assert!(!e.is_cancel());
        }
        // A caller that did not say it answers is never asked.
        let (asker, _rx) = channel();
        let mut p = Prompter::new(Answers::default(), Some(asker));
        assert_eq!(p.decide(&Prompt::NewPassword), cannot(&Prompt::NewPassword));
    }

    #[tokio::test]
    async fn an_interactive_caller_is_asked_what_was_not_given() {
        let (asker, mut rx) = channel();
        let mut p = Prompter::new(
            Answers {
                accept_notice: true,
                interactive: true,
                ..Answers::default()
            },
            Some(asker),
        );
        let notice = Prompt::Notice { text: "hi".into() };
        assert_eq!(p.decide(&notice), Decision::Answer(Answer::AcceptNotice));
        assert_eq!(p.decide(&token(false)), Decision::Ask);
        assert_eq!(p.decide(&token(true)), Decision::Ask);
        let caller = tokio::spawn(async move {
            let q = rx.recv().await.unwrap();
            assert_eq!(q.prompt, Prompt::NewPassword);
            q.reply(Answer::NewPassword {
                password: "n3w".into(),
            });
            // The request ends: no one answers any more.
        });
        assert_eq!(
            p.answer(&Prompt::NewPassword).await,
            Ok(Answer::NewPassword {
                password: "n3w".into()
            })
        );
        caller.await.unwrap();
        assert_eq!(
            p.answer(&token(true)).await,
            Err(PromptError::CannotAsk {
                what: token(true).what(),
                options: token(true).options(),
            })
        );
        assert_eq!(p.decide(&token(true)), cannot(&token(true)));
    }

    #[test]
    fn the_session_limit_ends_the_oldest_a_named_one_or_cancels() {
        let sessions = vec![session("b", 200), session("a", 100), session("c", 100)];
        let limit = Prompt::SessionLimit {
            sessions: sessions.clone(),
        };
        let decide = |choice| {
            Prompter::new(
                Answers {
                    at_session_limit: Some(choice),
                    ..Answers::default()
                },
                None,
            )
            .decide(&limit)
        };
        assert_eq!(
            decide(SessionChoice::Oldest),
            Decision::Answer(Answer::EndSession { id: "a".into() })
        );
        assert_eq!(
            decide(SessionChoice::parse("c")),
            Decision::Answer(Answer::EndSession { id: "c".into() })
        );
        assert_eq!(SessionChoice::parse("oldest"), SessionChoice::Oldest);
        assert_eq!(
            decide(SessionChoice::Cancel),
            Decision::Answer(Answer::Cancel)
        );
        let empty = Prompt::SessionLimit { sessions: vec![] };
        let mut p = Prompter::new(
            Answers {
                at_session_limit: Some(SessionChoice::Oldest),
                ..Answers::default()
            },
            None,
        );
        assert_eq!(p.decide(&empty), Decision::Fail(PromptError::NoSessions));
    }

    #[test]
    fn prompts_come_from_the_events_that_ask() {
        use tunnel_proto::ActiveSession;
        assert_eq!(
            Prompt::of(&ClientEvent::TokenRequired {
                prompt: "Code".into(),
                next: true
            }),
            Some(Prompt::Token {
                prompt: "Code".into(),
                next: true
            })
        );
        assert_eq!(
            Prompt::of(&ClientEvent::Notice {
                text: "shown only".into(),
                needs_acceptance: false
            }),
            None
        );
        assert_eq!(
            Prompt::of(&ClientEvent::SessionLimit {
                sessions: vec![ActiveSession {
                    id: "x".into(),
                    from: "10.0.0.1".into(),
                    started: 7
                }]
            }),
            Some(Prompt::SessionLimit {
                sessions: vec![ListedSession {
                    id: "x".into(),
                    from: "10.0.0.1".into(),
                    started: 7
                }]
            })
        );
        assert_eq!(Prompt::of(&ClientEvent::Authenticated), None);
    }

    #[test]
    fn answers_that_do_not_fit_are_refused_before_the_client_sees_them() {
        let mut client = Client::new(tunnel_proto::ClientConfig::new("gw.example"));
        let mut p = Prompter::default();
        let limit = Prompt::SessionLimit {
            sessions: vec![session("a", 1)],
        };
        assert_eq!(
            p.apply(
                &mut client,
                &limit,
                Answer::EndSession { id: "zz".into() },
                None
            ),
            Err(PromptError::UnknownSession {
                id: "zz".into(),
                listed: "a".into()
            })
        );
        assert_eq!(
            p.apply(&mut client, &limit, Answer::Cancel, None),
            Err(PromptError::Cancelled { what: limit.what() })
        );
        let notice = Prompt::Notice { text: "t".into() };
        let declined = p.apply(&mut client, &notice, Answer::Cancel, None);
        assert_eq!(declined, Err(PromptError::NoticeDeclined));
        assert!(declined.unwrap_err().is_cancel());
        assert!(matches!(
            p.apply(&mut client, &token(false), Answer::AcceptNotice, None),
            Err(PromptError::WrongAnswer { .. })
        ));
        assert_eq!(
            p.apply(
                &mut client,
                &Prompt::NewPassword,
                Answer::NewPassword {
                    password: "n".into()
                },
                None
            ),
            Err(PromptError::NoCurrentPassword)
        );
        // The client is not waiting for a token: its refusal is reported, typed.
        assert!(matches!(
            p.apply(
                &mut client,
                &token(false),
                Answer::Token { code: "1".into() },
                None
            ),
            Err(PromptError::Session { .. })
        ));
        assert_eq!(p.password(Some("old")), Some("old"));
    }

    #[test]
    fn only_the_current_form_cuts_and_only_longer_passwords() {
        let long = "a".repeat(19);
        let warning = password_cut(18, &long).unwrap();
        assert!(
            warning.contains("19 bytes") && warning.contains("cut to 18 bytes"),
            "{warning}"
        );
        assert_eq!(password_cut(18, &"a".repeat(18)), None);
        assert_eq!(password_cut(253, &long), None);
    }

    #[test]
    fn debug_output_leaves_secrets_out() {
        let a = Answers {
            token: Some("987654".into()),
            new_password: Some("hunter2".into()),
            ..Answers::default()
        };
        let text = format!(
            "{a:?} {:?}",
            Answer::NewPassword {
                password: "hunter2".into()
            }
        );
        assert!(
            !text.contains("987654") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
