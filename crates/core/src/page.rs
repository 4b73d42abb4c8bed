//! Cursor pagination shared by every list: `limit` plus an `after` cursor
//! (the last id of the previous page), ordered by creation.

use uuid::Uuid;

use crate::{Code, Error};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageReq {
    pub limit: u32,
    pub after: Option<Uuid>,
}

impl Default for PageReq {
    fn default() -> Self {
        Self { limit: DEFAULT_LIMIT, after: None }
    }
}

impl PageReq {
    pub fn new(limit: Option<u32>, after: Option<Uuid>) -> Result<Self, Error> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::new(Code::InvalidRequest, format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        Ok(Self { limit, after })
    }

    /// Rows to fetch: one more than the limit tells whether a next page exists.
    pub fn fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows.
    pub fn from_fetched(mut items: Vec<T>, req: PageReq) -> Self {
        let has_more = items.len() > req.limit as usize;
        items.truncate(req.limit as usize);
        Self { items, has_more }
    }
}
