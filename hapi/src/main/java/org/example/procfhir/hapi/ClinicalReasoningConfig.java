package org.example.procfhir.hapi;

import org.opencds.cqf.fhir.cql.EvaluationSettings;
import org.opencds.cqf.fhir.cr.hapi.config.RepositoryConfig;
import org.opencds.cqf.fhir.cr.hapi.config.r4.ApplyOperationConfig;
import org.opencds.cqf.fhir.utility.client.TerminologyServerClientSettings;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;

/**
 * Clinical reasoning (org.opencds.cqf.fhir:cqf-fhir-cr-hapi, built against HAPI 8.8.0): only the
 * {@code $apply} operations ({@code PlanDefinition/$apply}, {@code ActivityDefinition/$apply}),
 * over the server's own stored resources. No CQL library loading, no remote terminology.
 */
@Configuration
@Import({RepositoryConfig.class, ApplyOperationConfig.class})
public class ClinicalReasoningConfig {

	@Bean
	public EvaluationSettings evaluationSettings() {
		return EvaluationSettings.getDefault();
	}

	@Bean
	public TerminologyServerClientSettings terminologyServerClientSettings() {
		return TerminologyServerClientSettings.getDefault();
	}
}
