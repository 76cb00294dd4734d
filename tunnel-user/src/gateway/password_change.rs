//! A user's own password change at login: the rules a new password must meet, and what each
//! refusal tells the user.
//!
//! This module owns the rules only, sans-IO; `super::login` hashes the new password on a
//! hashing worker and `super::users::change_password` writes it. The rules come from
//! `[auth]` ([`PasswordRules`]): at least `min_length` characters (characters, not bytes: a
//! user counts what they type), at most what the password request form carries (253 bytes,
//! 18 with the current form, which cuts longer ones), different from the current password,
//! and not containing the user name (in any case).

use subtle::ConstantTimeEq;

use super::PasswordRules;

/// Why a password change was refused. [`ChangeRefused::message`] is what the user is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeRefused {
    /// The current password given with the change is not the one the login proved.
    #[error("the current password given with the change is wrong")]
    WrongOldPassword,
    #[error("the new password has fewer than {min} characters")]
    TooShort { min: u32 },
    #[error("the new password has more than {max} bytes")]
    TooLong { max: usize },
    #[error("the new password is the current one")]
    SameAsOld,
    #[error("the new password contains the user name")]
    ContainsUserName,
    /// No hashing worker was free in time.
    #[error("no hashing worker was free")]
    Busy,
    /// The user is no longer in the users file.
    #[error("the user is no longer in the users file")]
    UserGone,
    /// The new password could not be hashed or written (the log has the cause).
    #[error("the new password could not be stored")]
    Unavailable,
}

impl ChangeRefused {
    /// The message the user sees, worded as Ivanti Connect Secure words its own.
    pub fn message(&self) -> String {
        let reason = match self {
            ChangeRefused::WrongOldPassword => "The current password is incorrect.".to_string(),
            ChangeRefused::TooShort { min } => {
                format!("New password must be at least {min} characters long.")
            }
            ChangeRefused::TooLong { max } => {
                format!("New password must be at most {max} bytes long.")
            }
            ChangeRefused::SameAsOld => {
                "New password must be different from the current password.".to_string()
            }
            ChangeRefused::ContainsUserName => {
                "New password must not contain the username.".to_string()
            }
            ChangeRefused::Busy => "The gateway is busy. Try again in a moment.".to_string(),
            ChangeRefused::UserGone | ChangeRefused::Unavailable => "Try again later.".to_string(),
        };
        format!("Could not change password. {reason}")
    }
}

/// Checks `new` for `user`, whose current password is `old`, against `rules`.
pub fn check_new_password(
    rules: &PasswordRules,
    user: &str,
    old: &str,
    new: &str,
) -> Result<(), ChangeRefused> {
    if new.chars().count() < rules.min_length as usize {
        return Err(ChangeRefused::TooShort {
            min: rules.min_length,
        });
    }
    let max = rules.request.max_bytes();
    if new.len() > max {
        return Err(ChangeRefused::TooLong { max });
    }
    if bool::from(new.as_bytes().ct_eq(old.as_bytes())) {
        return Err(ChangeRefused::SameAsOld);
    }
    if new.to_lowercase().contains(&user.to_lowercase()) {
        return Err(ChangeRefused::ContainsUserName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::PasswordRequest;

    fn rules(request: PasswordRequest, min_length: u32) -> PasswordRules {
        PasswordRules {
            request,
            min_length,
            max_age: None,
        }
    }

    #[test]
    fn each_rule_refuses_with_its_own_message() {
        let current = rules(PasswordRequest::Current, 8);
        let check = |new: &str| check_new_password(&current, "alice", "old password", new);
        assert_eq!(check("Tr0ub4dor&3"), Ok(()));
        assert_eq!(check("short"), Err(ChangeRefused::TooShort { min: 8 }));
        assert_eq!(
            check("short").unwrap_err().message(),
            "Could not change password. New password must be at least 8 characters long."
        );
        // Characters, not bytes: seven two-byte letters are still too short.
        assert_eq!(check("ééééééé"), Err(ChangeRefused::TooShort { min: 8 }));
        assert_eq!(check("éééééééé"), Ok(()));
        // The current form carries 18 bytes; nine two-byte letters are 18.
        assert_eq!(check("ééééééééé"), Ok(()));
        assert_eq!(
            check("ééééééééééé"),
            Err(ChangeRefused::TooLong { max: 18 })
        );
        assert_eq!(
            check("nineteen characters"),
            Err(ChangeRefused::TooLong { max: 18 })
        );
        assert_eq!(check("old password"), Err(ChangeRefused::SameAsOld));
        assert_eq!(check("my-ALICE-pass"), Err(ChangeRefused::ContainsUserName));
        assert_eq!(
            check("my-ALICE-pass").unwrap_err().message(),
            "Could not change password. New password must not contain the username."
        );
        // The legacy form carries 253 bytes.
        let legacy = rules(PasswordRequest::Legacy, 8);
        let long = "x".repeat(253);
        assert_eq!(check_new_password(&legacy, "alice", "old", &long), Ok(()));
        assert_eq!(
            check_new_password(&legacy, "alice", "old", &format!("{long}y")),
            Err(ChangeRefused::TooLong { max: 253 })
        );
    }

    #[test]
    fn every_refusal_says_the_change_failed() {
        for refusal in [
            ChangeRefused::WrongOldPassword,
            ChangeRefused::SameAsOld,
            ChangeRefused::Busy,
            ChangeRefused::UserGone,
            ChangeRefused::Unavailable,
        ] {
            assert!(refusal.message().starts_with("Could not change password. "));
        }
    }
}
