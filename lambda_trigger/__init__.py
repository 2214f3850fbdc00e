"""S3 ObjectCreated -> SQS trigger (AWS Lambda, aws-lambda-powertools)."""
