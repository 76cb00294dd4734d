//! Which login step comes next: the gateway's side of the dialogue in docs/login.md.
//!
//! ```text
//!  pre-auth notice ─▶ password ─▶ password change ─▶ token code ─▶ session choice ─▶ post-auth notice ─▶ done
//!  (realm has one)               (expired)          (realm: totp)  (at the limit)   (realm has one)
//! ```
//!
//! [`Dialogue`] is sans-IO: it holds what has been proven so far and, asked with
//! [`Dialogue::next`], says which step the runtime should ask for; the runtime reports each
//! answer it has checked (`pre_notice_accepted`, `authenticated`, ...). Every report must
//! answer the step `next` last returned, so a client cannot skip a step by answering another
//! one's question: anything else is a [`DialogueError`] and ends the login. The checks
//! themselves (the password, the code, the new password) are `super::login`'s; the session
//! table is the runtime's, which passes the user's sessions in each time.
//!
//! A notice with `accept = false` is still a step: the runtime shows it (on the next request,
//! docs/login.md) and reports it as accepted at once.

use std::net::IpAddr;

use super::{Notice, RealmPolicy, SecondFactor, UserAttributes};

/// One of the user's sessions, as the session list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's id (AVP 0xd66), what the client answers with.
    pub id: String,
    /// Where the session's client connected from (0xd67).
    pub from: IpAddr,
    /// When it started, Unix seconds (0xd68).
    pub started_unix: u64,
}

/// What the runtime asks for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Show the realm's pre-auth notice; `accept`: the user must accept it.
    PreNotice(Notice),
    /// Ask for the user name and password.
    Password,
    /// Ask for the current and a new password.
    ChangePassword,
    /// Ask for a TOTP code.
    Token,
    /// The user holds the realm's most sessions: list them, the client picks one to end.
    SessionChoice(Vec<SessionInfo>),
    /// Show the realm's post-auth notice.
    PostNotice(Notice),
    /// Every step is done: the session may start.
    Done,
}

/// The steps, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    PreNotice,
    Password,
    ChangePassword,
    Token,
    SessionChoice,
    PostNotice,
    Done,
}

impl Next {
    fn step(&self) -> Step {
        match self {
            Next::PreNotice(_) => Step::PreNotice,
            Next::Password => Step::Password,
            Next::ChangePassword => Step::ChangePassword,
            Next::Token => Step::Token,
            Next::SessionChoice(_) => Step::SessionChoice,
            Next::PostNotice(_) => Step::PostNotice,
            Next::Done => Step::Done,
        }
    }
}

/// A report that does not fit the dialogue. Each ends the login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogueError {
    /// An answer to a step that was not the one asked (`asked`: `None` when nothing was).
    #[error("an answer to {answered:?} while {asked:?} was asked")]
    OutOfOrder { asked: Option<Step>, answered: Step },
    /// The realm asks for a TOTP code and the user has no secret.
    #[error("the realm needs a token code and the user has no TOTP secret")]
    NoTotpSecret,
    /// The client chose a session that was not in the list it was shown.
    #[error("session {id:?} was not offered")]
    SessionNotOffered { id: String },
}

impl DialogueError {
    /// What the client is told (J2 failure message).
    pub fn message(&self) -> &'static str {
        match self {
            DialogueError::OutOfOrder { .. } => "The login was answered out of order.",
            DialogueError::NoTotpSecret => "No token is set up for this user.",
            DialogueError::SessionNotOffered { .. } => "That session cannot be ended.",
        }
    }
}

/// What the password step proved about the user.
#[derive(Debug, Clone, Copy)]
struct Proven {
    must_change: bool,
}

/// One login's progress. See the module docs.
#[derive(Debug)]
pub struct Dialogue {
    policy: RealmPolicy,
    /// A certificate-only login: no password is asked, so none can be changed.
    certificate_only: bool,
    pre_notice_done: bool,
    user: Option<Proven>,
    password_changed: bool,
    token_done: bool,
    post_notice_done: bool,
    /// What [`Dialogue::next`] last returned and is not answered yet.
    asked: Option<Next>,
}

impl Dialogue {
    /// A login to the realm of `policy`. `certificate_only`: the realm's certificate login
    /// replaces the password (the runtime then reports [`Dialogue::authenticated`] for the
    /// password step after checking the certificate).
    pub fn new(policy: RealmPolicy, certificate_only: bool) -> Dialogue {
        Dialogue {
            policy,
            certificate_only,
            pre_notice_done: false,
            user: None,
            password_changed: false,
            token_done: false,
            post_notice_done: false,
            asked: None,
        }
    }

    /// The step to ask for now. `sessions`: the user's live sessions in this realm (empty
    /// while the user is not known yet).
    pub fn next(&mut self, sessions: &[SessionInfo]) -> Next {
        let next = self.compute(sessions);
        self.asked = Some(next.clone());
        next
    }

    fn compute(&self, sessions: &[SessionInfo]) -> Next {
        if !self.pre_notice_done
            && let Some(notice) = &self.policy.pre_auth_notice
        {
            return Next::PreNotice(notice.clone());
        }
        let Some(user) = self.user else {
            return Next::Password;
        };
        if user.must_change && !self.password_changed {
            return Next::ChangePassword;
        }
        if self.policy.second_factor == SecondFactor::Totp && !self.token_done {
            return Next::Token;
        }
        if let Some(max) = self.policy.max_sessions_per_user
            && sessions.len() >= max.get() as usize
        {
            return Next::SessionChoice(sessions.to_vec());
        }
        if !self.post_notice_done
            && let Some(notice) = &self.policy.post_auth_notice
        {
            return Next::PostNotice(notice.clone());
        }
        Next::Done
    }

    /// Takes the pending question if it is `step`.
    fn answer(&mut self, step: Step) -> Result<Next, DialogueError> {
        match self.asked.take() {
            Some(next) if next.step() == step => Ok(next),
            other => {
                let asked = other.as_ref().map(Next::step);
                self.asked = other;
                Err(DialogueError::OutOfOrder {
                    asked,
                    answered: step,
                })
            }
        }
    }

    /// The pre-auth notice was accepted (or shown, when it needs no acceptance).
    pub fn pre_notice_accepted(&mut self) -> Result<(), DialogueError> {
        self.answer(Step::PreNotice)?;
        self.pre_notice_done = true;
        Ok(())
    }

    /// The password (or, for a certificate-only login, the certificate) proved the user,
    /// whose users-file attributes are `attrs`, at Unix time `now_unix`.
    pub fn authenticated(
        &mut self,
        attrs: &UserAttributes,
        now_unix: u64,
    ) -> Result<(), DialogueError> {
        self.answer(Step::Password)?;
        if self.policy.second_factor == SecondFactor::Totp && attrs.totp.is_none() {
            return Err(DialogueError::NoTotpSecret);
        }
        let expired = attrs.password_expired(self.policy.passwords.max_age, now_unix);
        self.user = Some(Proven {
            must_change: expired && !self.certificate_only,
        });
        Ok(())
    }

    /// The new password was accepted and stored.
    pub fn password_changed(&mut self) -> Result<(), DialogueError> {
        self.answer(Step::ChangePassword)?;
        self.password_changed = true;
        Ok(())
    }

    /// The token code was accepted.
    pub fn token_accepted(&mut self) -> Result<(), DialogueError> {
        self.answer(Step::Token)?;
        self.token_done = true;
        Ok(())
    }

    /// The client chose session `id` to end; returns it, from the list it was shown. The
    /// runtime ends it, and the next [`Dialogue::next`] sees the shorter list.
    pub fn session_chosen(&mut self, id: &str) -> Result<SessionInfo, DialogueError> {
        let Next::SessionChoice(offered) = self.answer(Step::SessionChoice)? else {
            return Err(DialogueError::SessionNotOffered { id: id.to_string() });
        };
        offered
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| DialogueError::SessionNotOffered { id: id.to_string() })
    }

    /// The post-auth notice was accepted (or shown).
    pub fn post_notice_accepted(&mut self) -> Result<(), DialogueError> {
        self.answer(Step::PostNotice)?;
        self.post_notice_done = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroU32, time::Duration};

    use super::*;
    use crate::gateway::{GatewayConfig, TotpSecret};

    /// The policy of realm Users with `realm` lines in its table.
    fn policy(realm: &str, max_age_days: u32) -> RealmPolicy {
        let text = format!(
            "[tls]\ncertificate = \"c\"\nkey = \"k\"\n[auth]\nusers_file = \"u\"\n\
             [auth.passwords]\nmax_age_days = {max_age_days}\n\
             [pool]\nipv4 = \"10.10.0.0/24\"\n[realm.Users]\n{realm}\n"
        );
        let config: GatewayConfig = text.parse().unwrap();
        config.realm_policy("Users").unwrap()
    }

    const EVERYTHING: &str = "second_factor = \"totp\"\nmax_sessions_per_user = 1\n\
        pre_auth_notice = { text = \"before\" }\npost_auth_notice = { text = \"after\", accept = false }";

    fn attrs(totp: bool, must_change: bool) -> UserAttributes {
        UserAttributes {
            totp: totp.then(TotpSecret::generate),
            changed: Some(1_000),
            must_change,
        }
    }

    fn session(id: &str) -> SessionInfo {
        SessionInfo {
            id: id.to_string(),
            from: "192.0.2.7".parse().unwrap(),
            started_unix: 1_000,
        }
    }

    fn notice(text: &str, accept: bool) -> Notice {
        Notice {
            text: text.to_string(),
            accept,
        }
    }

    #[test]
    fn every_step_in_the_documented_order() {
        let mut d = Dialogue::new(policy(EVERYTHING, 0), false);
        let old = [session("s1")];
        assert_eq!(d.next(&[]), Next::PreNotice(notice("before", true)));
        d.pre_notice_accepted().unwrap();
        assert_eq!(d.next(&[]), Next::Password);
        d.authenticated(&attrs(true, true), 2_000).unwrap();
        assert_eq!(d.next(&old), Next::ChangePassword);
        d.password_changed().unwrap();
        assert_eq!(d.next(&old), Next::Token);
        d.token_accepted().unwrap();
        assert_eq!(d.next(&old), Next::SessionChoice(old.to_vec()));
        assert_eq!(d.session_chosen("s1").unwrap(), old[0]);
        // The runtime ended s1: below the limit now.
        assert_eq!(d.next(&[]), Next::PostNotice(notice("after", false)));
        d.post_notice_accepted().unwrap();
        assert_eq!(d.next(&[]), Next::Done);
    }

    #[test]
    fn a_plain_realm_asks_only_the_password() {
        let mut d = Dialogue::new(policy("", 0), false);
        assert_eq!(d.next(&[]), Next::Password);
        d.authenticated(&attrs(false, false), 2_000).unwrap();
        // Any number of sessions: no limit.
        let many: Vec<_> = (0..50).map(|i| session(&format!("s{i}"))).collect();
        assert_eq!(d.next(&many), Next::Done);
    }

    #[test]
    fn an_old_password_must_be_changed_and_an_unknown_age_need_not() {
        let p = policy("", 90);
        assert_eq!(p.passwords.max_age, Some(Duration::from_secs(90 * 86_400)));
        let day = 86_400;
        let aged = |changed: Option<u64>| UserAttributes {
            totp: None,
            changed,
            must_change: false,
        };
        for (changed, now, expected) in [
            (Some(0), 89 * day, Next::Done),
            (Some(0), 90 * day, Next::ChangePassword),
            (None, 1_000 * day, Next::Done),
        ] {
            let mut d = Dialogue::new(p.clone(), false);
            d.next(&[]);
            d.authenticated(&aged(changed), now).unwrap();
            assert_eq!(d.next(&[]), expected, "{changed:?} at {now}");
        }
        // A certificate-only login has no password to change.
        let mut d = Dialogue::new(p, true);
        d.next(&[]);
        d.authenticated(&attrs(false, true), 0).unwrap();
        assert_eq!(d.next(&[]), Next::Done);
    }

    #[test]
    fn answers_must_match_the_question_asked() {
        let mut d = Dialogue::new(policy(EVERYTHING, 0), false);
        // Nothing asked yet.
        assert_eq!(
            d.token_accepted(),
            Err(DialogueError::OutOfOrder {
                asked: None,
                answered: Step::Token
            })
        );
        assert!(matches!(d.next(&[]), Next::PreNotice(_)));
        // Skipping the notice by answering the password step is refused, and the notice is
        // still what is asked.
        assert_eq!(
            d.authenticated(&attrs(true, false), 0),
            Err(DialogueError::OutOfOrder {
                asked: Some(Step::PreNotice),
                answered: Step::Password
            })
        );
        d.pre_notice_accepted().unwrap();
        // An answer counts once: the same answer again is out of order.
        assert!(d.pre_notice_accepted().is_err());
        assert_eq!(d.next(&[]), Next::Password);
        d.authenticated(&attrs(true, false), 0).unwrap();
        assert_eq!(d.next(&[]), Next::Token);
        assert!(d.post_notice_accepted().is_err());
        d.token_accepted().unwrap();
        // A session that was not offered (another user's, say) cannot be ended.
        let mine = [session("mine")];
        assert!(matches!(d.next(&mine), Next::SessionChoice(_)));
        assert_eq!(
            d.session_chosen("someone-elses"),
            Err(DialogueError::SessionNotOffered {
                id: "someone-elses".into()
            })
        );
    }

    #[test]
    fn a_totp_realm_refuses_a_user_without_a_secret_after_the_password() {
        let mut d = Dialogue::new(policy("second_factor = \"totp\"", 0), false);
        assert_eq!(d.next(&[]), Next::Password);
        let err = d.authenticated(&attrs(false, false), 0).unwrap_err();
        assert_eq!(err, DialogueError::NoTotpSecret);
        assert_eq!(err.message(), "No token is set up for this user.");
    }

    #[test]
    fn the_session_limit_counts_the_users_sessions() {
        let mut p = policy("", 0);
        p.max_sessions_per_user = NonZeroU32::new(2);
        let mut d = Dialogue::new(p, false);
        d.next(&[]);
        d.authenticated(&attrs(false, false), 0).unwrap();
        assert_eq!(d.next(&[session("a")]), Next::Done);
        let two = [session("a"), session("b")];
        assert_eq!(d.next(&two), Next::SessionChoice(two.to_vec()));
        assert_eq!(d.session_chosen("b").unwrap(), two[1]);
        assert_eq!(d.next(&two[..1]), Next::Done);
    }
}
