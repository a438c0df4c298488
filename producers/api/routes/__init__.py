"""The API's route groups, one `APIRouter` each; `create_api` includes them in order."""
