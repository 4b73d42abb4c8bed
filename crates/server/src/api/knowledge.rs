//! Knowledge bases: `/v1/knowledge-bases` (create and delete: tenant admin;
//! read and search: tenant app), their documents (upload as JSON or
//! multipart, listed with ingestion status), search; and the
//! OpenAI-compatible `/v1/embeddings`.

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use bulkhead_core::{Code, DocId, KbId};
use bulkhead_knowledge::embedding::EmbedTags;
use bulkhead_knowledge::{Hit, KbRequest, SearchMode, SearchRequest, Upload};
use bulkhead_store::{Document, KnowledgeBase, MetadataFilter, Upserted};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::agents::{list_json, rfc3339};
use super::{Created, ListParams, parse_id};
use crate::AppState;
use crate::auth::{TenantAdmin, TenantApp};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};

/// The most an upload request may carry on the wire; the configured
/// `knowledge.max_document_bytes` applies to each document within it.
const UPLOAD_BODY_CAP: usize = 256 * 1024 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_kb, list_kbs))
        .routes(routes!(get_kb, delete_kb))
        .routes(routes!(list_documents))
        .routes(routes!(get_document, delete_document))
        .routes(routes!(search))
        .routes(routes!(embeddings))
        .merge(OpenApiRouter::new().routes(routes!(upload)).layer(DefaultBodyLimit::max(UPLOAD_BODY_CAP)))
}

fn kb_json(k: &KnowledgeBase) -> Value {
    json!({"id": k.id, "name": k.name, "description": k.description, "embedding_model": k.embedding_model,
           "dimensions": k.dims, "chunk_tokens": k.chunk_tokens, "chunk_overlap": k.chunk_overlap,
           "documents": k.documents, "chunks": k.chunks, "bytes": k.bytes,
           "created_at": rfc3339(k.created_at), "updated_at": rfc3339(k.updated_at)})
}

fn doc_json(d: &Document) -> Value {
    json!({"id": d.id, "knowledge_base_id": d.kb_id, "name": d.name, "format": d.format, "sha256": d.sha256,
           "bytes": d.bytes, "status": d.status.as_str(), "error": d.error, "chunks": d.chunks,
           "progress": {"done": d.progress_done, "total": d.progress_total}, "metadata": d.metadata,
           "created_at": rfc3339(d.created_at), "updated_at": rfc3339(d.updated_at),
           "ingested_at": d.ingested_at.map(rfc3339)})
}

fn upserted_json(u: &Upserted) -> Value {
    let mut v = doc_json(u.document());
    v["upload"] = json!(match u {
        Upserted::Created(_) => "created",
        Upserted::Replaced(_) => "replaced",
        Upserted::Unchanged(_) => "unchanged",
    });
    v
}

fn hit_json(h: &Hit) -> Value {
    json!({"chunk_id": h.chunk_id, "knowledge_base_id": h.kb_id, "document_id": h.doc_id,
           "document": h.doc_name, "ord": h.ord, "text": h.text, "metadata": h.metadata, "score": h.score,
           "vector_score": h.vector_score, "text_score": h.text_score})
}

/// A knowledge base to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKb {
    /// Unique within the tenant.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// An embedding model (name or alias); default: the tenant's `embedding` task model.
    pub embedding_model: Option<String>,
    /// Chunk size in tokens (default from the server's configuration).
    pub chunk_tokens: Option<i32>,
    pub chunk_overlap: Option<i32>,
}

/// Create a knowledge base (tenant admin).
#[utoipa::path(post, path = "/v1/knowledge-bases", tag = "knowledge", security(("bearer" = [])),
    request_body = CreateKb,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_kb(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiJson(body): ApiJson<CreateKb>,
) -> ApiResult<Created<Value>> {
    let req = KbRequest {
        name: body.name,
        description: body.description,
        embedding_model: body.embedding_model,
        chunk_tokens: body.chunk_tokens,
        chunk_overlap: body.chunk_overlap,
    };
    let kb = state.knowledge.create_kb(&ctx, req).await?;
    Ok((StatusCode::CREATED, Json(kb_json(&kb))))
}

/// List the tenant's knowledge bases, with document, chunk and byte counts.
#[utoipa::path(get, path = "/v1/knowledge-bases", tag = "knowledge", security(("bearer" = [])),
    params(ListParams), responses((status = 200, body = Object)))]
async fn list_kbs(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let page = state.knowledge.list_kbs(&ctx, p.page()?).await?;
    Ok(Json(list_json(page, |k| k.id.as_uuid(), kb_json)))
}

/// Show a knowledge base.
#[utoipa::path(get, path = "/v1/knowledge-bases/{kb_id}", tag = "knowledge", security(("bearer" = [])),
    params(("kb_id" = Uuid, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_kb(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let id: KbId = parse_id(&id, "knowledge base")?;
    Ok(Json(kb_json(&state.knowledge.get_kb(&ctx, id).await?)))
}

/// Delete a knowledge base with its documents, chunks and vectors (tenant admin).
#[utoipa::path(delete, path = "/v1/knowledge-bases/{kb_id}", tag = "knowledge", security(("bearer" = [])),
    params(("kb_id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_kb(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: KbId = parse_id(&id, "knowledge base")?;
    state.knowledge.delete_kb(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A document given as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadJson {
    /// Unique within the knowledge base; uploading a name again replaces the document.
    pub name: String,
    /// The document's text.
    pub content: String,
    /// `text`, `markdown` or `html` (default: from the name's extension, else `text`).
    pub format: Option<String>,
    /// Metadata to filter searches by (string, number or boolean values).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Upload documents (tenant admin): JSON (`name`, `content`, `format`,
/// `metadata`), or `multipart/form-data` with one or more `file` parts and
/// optional `format` and `metadata` (JSON) parts. Documents are checked at
/// once (4xx for empty, binary, badly encoded, oversized or unparseable
/// input, and then nothing is stored) and ingested by a job: poll the
/// document's `status` and `progress`.
#[utoipa::path(post, path = "/v1/knowledge-bases/{kb_id}/documents", tag = "knowledge",
    security(("bearer" = [])), params(("kb_id" = Uuid, Path)), request_body = UploadJson,
    responses((status = 202, description = "queued for ingestion", body = Object),
              (status = 200, description = "unchanged", body = Object),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn upload(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let kb: KbId = parse_id(&id, "knowledge base")?;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        let form = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::new(Code::InvalidRequest, format!("multipart: {}", e.body_text())))?;
        let uploads = read_multipart(form).await?;
        let done = state.knowledge.upload_all(&ctx, kb, uploads).await?;
        let status = if done.iter().all(|u| matches!(u, Upserted::Unchanged(_))) {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Ok((status, Json(json!({"data": done.iter().map(upserted_json).collect::<Vec<_>>()}))));
    }
    let ApiJson(body) = ApiJson::<UploadJson>::from_request(request, &state).await?;
    let upload = Upload {
        name: body.name,
        format: body.format,
        content: body.content.into_bytes(),
        metadata: body.metadata.unwrap_or_else(|| json!({})),
    };
    let done = state.knowledge.upload_all(&ctx, kb, vec![upload]).await?;
    let u = &done[0];
    let status = if matches!(u, Upserted::Unchanged(_)) { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(upserted_json(u))))
}

async fn read_multipart(mut form: Multipart) -> ApiResult<Vec<Upload>> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            Code::PayloadTooLarge
        } else {
            Code::InvalidRequest
        };
        ApiError::new(code, format!("multipart: {}", e.body_text()))
    };
    let mut files = Vec::new();
    let mut format = None;
    let mut metadata = json!({});
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("file") => {
                let name = field
                    .file_name()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::new(Code::InvalidRequest, "a `file` part needs a filename"))?;
                let bytes = field.bytes().await.map_err(bad)?;
                files.push((name, bytes.to_vec()));
            }
            Some("format") => format = Some(field.text().await.map_err(bad)?),
            Some("metadata") => {
                let text = field.text().await.map_err(bad)?;
                metadata = serde_json::from_str(&text)
                    .map_err(|e| ApiError::new(Code::InvalidRequest, format!("metadata: {e}")))?;
            }
            other => {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    format!("unexpected part {:?}; send `file`, `format` or `metadata`", other.unwrap_or("")),
                ));
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::new(Code::InvalidRequest, "no `file` part in the upload"));
    }
    Ok(files
        .into_iter()
        .map(|(name, content)| Upload { name, format: format.clone(), content, metadata: metadata.clone() })
        .collect())
}

/// List a knowledge base's documents with their ingestion status.
#[utoipa::path(get, path = "/v1/knowledge-bases/{kb_id}/documents", tag = "knowledge",
    security(("bearer" = [])), params(("kb_id" = Uuid, Path), ListParams),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn list_documents(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let kb: KbId = parse_id(&id, "knowledge base")?;
    let page = state.knowledge.list_documents(&ctx, kb, p.page()?).await?;
    Ok(Json(list_json(page, |d| d.id.as_uuid(), doc_json)))
}

/// Show a document and its ingestion status.
#[utoipa::path(get, path = "/v1/knowledge-bases/{kb_id}/documents/{doc_id}", tag = "knowledge",
    security(("bearer" = [])), params(("kb_id" = Uuid, Path), ("doc_id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn get_document(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    ApiPath((kb, doc)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let kb: KbId = parse_id(&kb, "knowledge base")?;
    let doc: DocId = parse_id(&doc, "document")?;
    Ok(Json(doc_json(&state.knowledge.get_document(&ctx, kb, doc).await?)))
}

/// Delete a document with its chunks and vectors (tenant admin).
#[utoipa::path(delete, path = "/v1/knowledge-bases/{kb_id}/documents/{doc_id}", tag = "knowledge",
    security(("bearer" = [])), params(("kb_id" = Uuid, Path), ("doc_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_document(
    State(state): State<AppState>,
    TenantAdmin(ctx): TenantAdmin,
    ApiPath((kb, doc)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let kb: KbId = parse_id(&kb, "knowledge base")?;
    let doc: DocId = parse_id(&doc, "document")?;
    state.knowledge.delete_document(&ctx, kb, doc).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A search.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub query: String,
    /// Results, 1–50 (default 5).
    pub k: Option<usize>,
    /// `hybrid` (default: vectors and full text, fused by reciprocal rank), `vector` or `text`.
    pub mode: Option<String>,
    /// Equality filters on document metadata.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<MetadataFilter>,
    /// More of the tenant's knowledge bases to search along with this one.
    #[serde(default)]
    pub also: Vec<uuid::Uuid>,
}

/// Search a knowledge base (and optionally more of the tenant's).
#[utoipa::path(post, path = "/v1/knowledge-bases/{kb_id}/search", tag = "knowledge",
    security(("bearer" = [])), params(("kb_id" = Uuid, Path)), request_body = SearchBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn search(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    headers: axum::http::HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SearchBody>,
) -> ApiResult<Json<Value>> {
    let kb: KbId = parse_id(&id, "knowledge base")?;
    let mut kbs = vec![kb];
    kbs.extend(body.also.into_iter().map(KbId::from_uuid));
    let req = SearchRequest {
        query: body.query,
        kbs,
        k: body.k.unwrap_or(5),
        mode: body.mode.as_deref().map(str::parse).transpose()?.unwrap_or(SearchMode::Hybrid),
        filter: body.filter.unwrap_or_default(),
        request_id: headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    let hits = state.knowledge.search(&ctx, &req).await?;
    let data = hits.iter().map(|h| h.get_for(&ctx).map(hit_json)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"data": data})))
}

/// OpenAI-compatible embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsBody {
    pub model: String,
    /// A string or an array of strings.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` only.
    pub encoding_format: Option<String>,
    pub user: Option<String>,
    pub dimensions: Option<u32>,
}

/// Embeddings through the tenant's models (OpenAI-compatible), metered.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", security(("bearer" = [])),
    request_body = EmbeddingsBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn embeddings(
    State(state): State<AppState>,
    TenantApp(ctx): TenantApp,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<EmbeddingsBody>,
) -> ApiResult<Json<Value>> {
    let inputs: Vec<String> = match &body.input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if !items.is_empty() && items.len() <= 2_048 => {
            items.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().ok_or_else(
                || ApiError::new(Code::InvalidRequest, "input must be a string or an array of strings"),
            )?
        }
        _ => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                "input must be a string or an array of 1-2048 strings",
            ));
        }
    };
    if inputs.iter().any(String::is_empty) {
        return Err(ApiError::new(Code::InvalidRequest, "input strings must not be empty"));
    }
    if body.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError::new(Code::InvalidRequest, "encoding_format must be `float`"));
    }
    let embedding = state.knowledge.embedding();
    let model = embedding.resolve(&ctx, Some(&body.model)).await?;
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let tags = EmbedTags {
        event_id: format!("embeddings-{}", uuid::Uuid::now_v7()),
        request_id,
        attributes: json!({"endpoint": "/v1/embeddings"}),
    };
    let out = embedding.embed(&ctx, &model, &inputs, &tags).await?;
    if let Some(d) = body.dimensions
        && out.vectors.first().is_some_and(|v| v.len() != d as usize)
    {
        return Err(ApiError::new(
            Code::InvalidRequest,
            format!("model `{model}` does not give {d} dimensions"),
        ));
    }
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens}})))
}
